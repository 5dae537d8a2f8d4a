-- Runs once, when the PostgreSQL volume is first created (POSTGRES_DB makes "mlflow").
-- Prefect gets its own database: MLflow and Prefect both keep an alembic_version table.
CREATE DATABASE prefect;
