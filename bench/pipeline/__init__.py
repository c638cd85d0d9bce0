"""Pipeline benchmark: the churn training workflow through Airflow vs called directly."""
