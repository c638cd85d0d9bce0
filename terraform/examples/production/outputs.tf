# The root module's outputs, passed through: `terraform output -raw storage_root` and so on.

output "region" {
  description = "AWS region of the deployment (AWS_DEFAULT_REGION of the pods; region_name of the Airflow aws_default connection)."
  value       = module.mlwp.region
}

output "cluster_name" {
  description = "Name of the EKS cluster (aws eks update-kubeconfig --name ...)."
  value       = module.mlwp.cluster_name
}

output "cluster_endpoint" {
  description = "HTTPS endpoint of the Kubernetes API server."
  value       = module.mlwp.cluster_endpoint
}

output "cluster_certificate_authority_data" {
  description = "Base64 CA certificate of the Kubernetes API server (for a kubeconfig or the helm provider)."
  value       = module.mlwp.cluster_certificate_authority_data
}

output "kubeconfig_command" {
  description = "Command that writes a kubeconfig entry for the cluster."
  value       = module.mlwp.kubeconfig_command
}

output "workload_identity" {
  description = "pod_identity (nothing to annotate: the associations exist) or irsa (annotate each service account with eks.amazonaws.com/role-arn = its role from service_account_role_arns)."
  value       = module.mlwp.workload_identity
}

output "service_accounts" {
  description = "Service accounts bound to each workload role, as the chart must name them: role => [{namespace, name}]."
  value       = module.mlwp.service_accounts
}

output "service_account_role_arns" {
  description = "IAM role ARN per workload (airflow_worker, airflow_core, mlflow, serving, log_shipper); with IRSA, the eks.amazonaws.com/role-arn annotation of that workload's service accounts."
  value       = module.mlwp.service_account_role_arns
}

output "sagemaker_execution_role_arn" {
  description = "Execution role of SageMaker training and tuning jobs: sagemaker_role_arn in the extra of the Airflow aws_default connection."
  value       = module.mlwp.sagemaker_execution_role_arn
}

output "sagemaker_output_root" {
  description = "Where SageMaker jobs write model.tar.gz and checkpoints: sagemaker_output_root in the extra of the Airflow aws_default connection."
  value       = module.mlwp.sagemaker_output_root
}

output "sagemaker_subnet_ids" {
  description = "Private subnets for sagemaker.subnets in definitions (training inside the VPC)."
  value       = module.mlwp.sagemaker_subnet_ids
}

output "sagemaker_security_group_id" {
  description = "Security group for sagemaker.security_group_ids in definitions; null unless sagemaker_vpc_access."
  value       = module.mlwp.sagemaker_security_group_id
}

output "storage_root" {
  description = "MLWP_STORAGE_ROOT: where datasets, features and SageMaker channels live."
  value       = module.mlwp.storage_root
}

output "mlflow_artifacts_destination" {
  description = "MLWP_MLFLOW_ARTIFACTS_DESTINATION, i.e. mlflow server --artifacts-destination."
  value       = module.mlwp.mlflow_artifacts_destination
}

output "airflow_remote_base_log_folder" {
  description = "MLWP_REMOTE_LOG_FOLDER, i.e. Airflow's [logging] remote_base_log_folder (official chart: config.logging.remote_base_log_folder, with remote_logging True and remote_log_conn_id aws_default)."
  value       = module.mlwp.airflow_remote_base_log_folder
}

output "bucket_names" {
  description = "S3 bucket name per purpose: data, models, artifacts, logs, and s3_access (server access logs)."
  value       = module.mlwp.bucket_names
}

output "kms_key_arn" {
  description = "ARN of the deployment's KMS key (S3, RDS, ElastiCache, Secrets Manager, CloudWatch Logs, ECR)."
  value       = module.mlwp.kms_key_arn
}

output "database_host" {
  description = "Host name of the PostgreSQL instance (MLWP_DATABASE_URL, MLWP_MLFLOW_BACKEND_STORE_URI)."
  value       = module.mlwp.database_host
}

output "database_port" {
  description = "Port of the PostgreSQL instance."
  value       = module.mlwp.database_port
}

output "database_username" {
  description = "Master user name of the PostgreSQL instance."
  value       = module.mlwp.database_username
  sensitive   = true
}

output "database_names" {
  description = "Databases on the instance: airflow (created by RDS); mlflow, mlflow_auth and serving to create once (docs/deploy.md, step 4)."
  value       = module.mlwp.database_names
}

output "database_master_user_secret_arn" {
  description = "Secrets Manager secret (JSON with username and password) that RDS manages and rotates; build MLWP_DATABASE_URL from it."
  value       = module.mlwp.database_master_user_secret_arn
}

output "database_url_template" {
  description = "MLWP_DATABASE_URL with the password left as {password} (URL-encode it); the mlflow database uses the same form for MLWP_MLFLOW_BACKEND_STORE_URI."
  value       = module.mlwp.database_url_template
}

output "redis_host" {
  description = "Primary endpoint of the Redis replication group (MLWP_REDIS_URL)."
  value       = module.mlwp.redis_host
}

output "redis_port" {
  description = "Port of the Redis replication group."
  value       = module.mlwp.redis_port
}

output "redis_auth_token_secret_arn" {
  description = "Secrets Manager secret holding the Redis AUTH token."
  value       = module.mlwp.redis_auth_token_secret_arn
}

output "redis_url_template" {
  description = "MLWP_REDIS_URL with the AUTH token left as {auth_token}: TLS (rediss://), certificate checked; give each user its own DB number (see README)."
  value       = module.mlwp.redis_url_template
}

output "ecr_repository_urls" {
  description = "ECR repository URL per image: platform (Airflow + mlwp) and serving; the image.repository values of the charts."
  value       = module.mlwp.ecr_repository_urls
}

output "log_group_names" {
  description = "CloudWatch log group per component (airflow, mlflow, serving) for the Fluent Bit outputs."
  value       = module.mlwp.log_group_names
}

output "vpc_id" {
  description = "ID of the VPC."
  value       = module.mlwp.vpc_id
}

output "private_subnet_ids" {
  description = "Private subnets of the nodes (internal load balancers, SageMaker in the VPC)."
  value       = module.mlwp.private_subnet_ids
}

output "platform_environment" {
  description = "Non-secret environment of the platform pods (Airflow components and the KubernetesExecutor pod template): AWS_DEFAULT_REGION, MLWP_STORAGE_ROOT, MLWP_REMOTE_LOG_FOLDER (mlwp derives Airflow's remote logging from it), MLWP_MLFLOW_ARTIFACTS_DESTINATION, and MLWP_SECRETS_MANAGER_REGION when airflow_secrets_backend is on."
  value       = module.mlwp.platform_environment
}

output "airflow_aws_connection_extra" {
  description = "Extra of the Airflow aws_default connection (JSON): region, the SageMaker execution role and output root; credentials come from the pod's role."
  value       = module.mlwp.airflow_aws_connection_extra
}
