################################################################################
# What the Helm values and the environment of mlwp need. terraform/README.md maps each output
# to the chart value or environment variable it feeds.
################################################################################

output "region" {
  description = "AWS region of the deployment (AWS_DEFAULT_REGION of the pods; region_name of the Airflow aws_default connection)."
  value       = local.region
}

output "cluster_name" {
  description = "Name of the EKS cluster (aws eks update-kubeconfig --name ...)."
  value       = module.eks.cluster_name
}

output "cluster_endpoint" {
  description = "HTTPS endpoint of the Kubernetes API server."
  value       = module.eks.cluster_endpoint
}

output "cluster_certificate_authority_data" {
  description = "Base64 CA certificate of the Kubernetes API server (for a kubeconfig or the helm provider)."
  value       = module.eks.cluster_certificate_authority_data
}

output "kubeconfig_command" {
  description = "Command that writes a kubeconfig entry for the cluster."
  value       = "aws eks update-kubeconfig --region ${local.region} --name ${module.eks.cluster_name}"
}

output "workload_identity" {
  description = "pod_identity (nothing to annotate: the associations exist) or irsa (annotate each service account with eks.amazonaws.com/role-arn = its role from service_account_role_arns)."
  value       = var.workload_identity
}

output "service_accounts" {
  description = "Service accounts bound to each workload role, as the chart must name them: role => [{namespace, name}]."
  value       = var.service_accounts
}

output "service_account_role_arns" {
  description = "IAM role ARN per workload (airflow_worker, airflow_core, mlflow, serving, log_shipper); with IRSA, the eks.amazonaws.com/role-arn annotation of that workload's service accounts."
  value       = { for role, module_role in module.workload_role : role => module_role.arn }
}

output "sagemaker_execution_role_arn" {
  description = "Execution role of SageMaker training and tuning jobs: sagemaker_role_arn in the extra of the Airflow aws_default connection."
  value       = module.sagemaker_execution_role.arn
}

output "sagemaker_output_root" {
  description = "Where SageMaker jobs write model.tar.gz and checkpoints: sagemaker_output_root in the extra of the Airflow aws_default connection."
  value       = "s3://${module.bucket["models"].s3_bucket_id}"
}

output "sagemaker_subnet_ids" {
  description = "Private subnets for sagemaker.subnets in definitions (training inside the VPC)."
  value       = module.vpc.private_subnets
}

output "sagemaker_security_group_id" {
  description = "Security group for sagemaker.security_group_ids in definitions; null unless sagemaker_vpc_access."
  value       = try(aws_security_group.sagemaker[0].id, null)
}

output "storage_root" {
  description = "MLWP_STORAGE_ROOT: where datasets, features, SageMaker channels and prediction captures live; the Airflow pods and serving (charts/mlwp serving.storage.root) get the same."
  value       = "s3://${module.bucket["data"].s3_bucket_id}"
}

output "mlflow_artifacts_destination" {
  description = "MLWP_MLFLOW_ARTIFACTS_DESTINATION, i.e. mlflow server --artifacts-destination."
  value       = "s3://${module.bucket["artifacts"].s3_bucket_id}/mlflow"
}

output "airflow_remote_base_log_folder" {
  description = "MLWP_REMOTE_LOG_FOLDER, i.e. Airflow's [logging] remote_base_log_folder (official chart: config.logging.remote_base_log_folder, with remote_logging True and remote_log_conn_id aws_default)."
  value       = "s3://${module.bucket["logs"].s3_bucket_id}/${local.task_log_key}"
}

output "bucket_names" {
  description = "S3 bucket name per purpose: data, models, artifacts, logs, and s3_access (server access logs)."
  value = merge(
    { for key, bucket in module.bucket : key => bucket.s3_bucket_id },
    { s3_access = module.access_log_bucket.s3_bucket_id },
  )
}

output "kms_key_arn" {
  description = "ARN of the deployment's KMS key (S3, RDS, ElastiCache, Secrets Manager, CloudWatch Logs, ECR)."
  value       = aws_kms_key.this.arn
}

output "database_host" {
  description = "Host name of the PostgreSQL instance (MLWP_DATABASE_URL, MLWP_MLFLOW_BACKEND_STORE_URI)."
  value       = module.database.db_instance_address
}

output "database_port" {
  description = "Port of the PostgreSQL instance."
  value       = module.database.db_instance_port
}

output "database_username" {
  description = "Master user name of the PostgreSQL instance."
  value       = module.database.db_instance_username
  sensitive   = true
}

output "database_names" {
  description = "Databases on the instance: airflow (created by RDS); mlflow, mlflow_auth and serving to create once (docs/deploy.md, step 4)."
  value       = { airflow = "airflow", mlflow = "mlflow", mlflow_auth = "mlflow_auth", serving = "serving" }
}

output "database_master_user_secret_arn" {
  description = "Secrets Manager secret (JSON with username and password) that RDS manages and rotates; build MLWP_DATABASE_URL from it."
  value       = module.database.db_instance_master_user_secret_arn
}

output "database_url_template" {
  description = "MLWP_DATABASE_URL with the password left as {password} (URL-encode it); the mlflow database uses the same form for MLWP_MLFLOW_BACKEND_STORE_URI."
  value       = "postgresql://mlwp_admin:{password}@${module.database.db_instance_address}:${module.database.db_instance_port}/airflow?sslmode=require"
}

output "redis_host" {
  description = "Primary endpoint of the Redis replication group (MLWP_REDIS_URL)."
  value       = module.redis.replication_group_primary_endpoint_address
}

output "redis_port" {
  description = "Port of the Redis replication group."
  value       = module.redis.replication_group_port
}

output "redis_auth_token_secret_arn" {
  description = "Secrets Manager secret holding the Redis AUTH token."
  value       = aws_secretsmanager_secret.redis_auth_token.arn
}

output "redis_url_template" {
  description = "MLWP_REDIS_URL with the AUTH token left as {auth_token}: TLS (rediss://), certificate checked; give each user its own DB number (see README)."
  value       = "rediss://:{auth_token}@${module.redis.replication_group_primary_endpoint_address}:${module.redis.replication_group_port}/0?ssl_cert_reqs=required"
}

output "ecr_repository_urls" {
  description = "ECR repository URL per image: platform (Airflow + mlwp) and serving; the image.repository values of the charts."
  value       = { for key, repository in module.repository : key => repository.repository_url }
}

output "log_group_names" {
  description = "CloudWatch log group per component (airflow, mlflow, serving) for the Fluent Bit outputs."
  value       = { for key, group in aws_cloudwatch_log_group.this : key => group.name }
}

output "vpc_id" {
  description = "ID of the VPC."
  value       = module.vpc.vpc_id
}

output "private_subnet_ids" {
  description = "Private subnets of the nodes (internal load balancers, SageMaker in the VPC)."
  value       = module.vpc.private_subnets
}

output "platform_environment" {
  description = "Non-secret environment of the platform pods (Airflow components and the KubernetesExecutor pod template): AWS_DEFAULT_REGION, MLWP_STORAGE_ROOT, MLWP_REMOTE_LOG_FOLDER (mlwp derives Airflow's remote logging from it), MLWP_MLFLOW_ARTIFACTS_DESTINATION, and MLWP_SECRETS_MANAGER_REGION when airflow_secrets_backend is on."
  value = merge(
    {
      AWS_DEFAULT_REGION                = local.region
      MLWP_STORAGE_ROOT                 = "s3://${module.bucket["data"].s3_bucket_id}"
      MLWP_REMOTE_LOG_FOLDER            = "s3://${module.bucket["logs"].s3_bucket_id}/${local.task_log_key}"
      MLWP_MLFLOW_ARTIFACTS_DESTINATION = "s3://${module.bucket["artifacts"].s3_bucket_id}/mlflow"
    },
    var.airflow_secrets_backend ? { MLWP_SECRETS_MANAGER_REGION = local.region } : {},
  )
}

output "airflow_aws_connection_extra" {
  description = "Extra of the Airflow aws_default connection (JSON): region, the SageMaker execution role and output root; credentials come from the pod's role."
  value = jsonencode({
    region_name           = local.region
    sagemaker_role_arn    = module.sagemaker_execution_role.arn
    sagemaker_output_root = "s3://${module.bucket["models"].s3_bucket_id}"
  })
}
