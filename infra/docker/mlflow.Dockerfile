# MLflow tracking server with the Postgres and S3 clients it needs.
FROM ghcr.io/mlflow/mlflow:v3.17.2
RUN pip install --no-cache-dir "psycopg2-binary>=2.9" "boto3>=1.34"
