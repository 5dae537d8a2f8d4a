# MLflow tracking server with the PostgreSQL driver and boto3 (S3 artifacts on MinIO).
# The same MLflow minor as the clients (pyproject pins mlflow>=3.17,<3.18).
FROM python:3.11-slim
RUN pip install --no-cache-dir "mlflow>=3.17,<3.18" psycopg2-binary boto3
EXPOSE 5000
