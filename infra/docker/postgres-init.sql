-- The MLflow database is created by POSTGRES_DB; Prefect gets its own.
CREATE DATABASE prefect OWNER skinflow;
