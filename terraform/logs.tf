################################################################################
# CloudWatch Logs: the pods' logs, shipped by Fluent Bit (aws-for-fluent-bit) with the
# log_shipper role. EKS control plane, RDS, ElastiCache and VPC flow logs have their own groups,
# created by their modules with the same retention and key.
################################################################################

locals {
  log_groups = {
    airflow = "Airflow api-server, scheduler, dag-processor, triggerer and workers"
    mlflow  = "MLflow tracking server"
    serving = "mlwp serving (FastAPI)"
  }
}

resource "aws_cloudwatch_log_group" "this" {
  #checkov:skip=CKV_AWS_338:Retention is per environment (log_retention_in_days): 365 days in the production example, 30 in staging where a year of debug logs is cost without use
  for_each = local.log_groups

  name              = "/mlwp/${var.name}/${each.key}"
  retention_in_days = var.log_retention_in_days
  kms_key_id        = aws_kms_key.this.arn

  tags = merge(local.tags, { "mlwp:purpose" = each.value })
}
