################################################################################
# RDS PostgreSQL: Airflow's metadata database (`airflow`) and MLflow's (`mlflow`, created by
# the chart's setup job: RDS makes only one database at creation)
################################################################################

resource "aws_security_group" "database" {
  #checkov:skip=CKV2_AWS_5:Attached to the RDS instance by module.database (vpc_security_group_ids), which checkov cannot see without downloading the module
  name_prefix = "${var.name}-postgres-"
  description = "PostgreSQL of mlwp ${var.name}: reachable from the EKS nodes only"
  vpc_id      = module.vpc.vpc_id
  tags        = merge(local.tags, { Name = "${var.name}-postgres" })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "database_from_nodes" {
  for_each = local.node_security_groups

  security_group_id            = aws_security_group.database.id
  description                  = "PostgreSQL from the EKS ${each.key} security group"
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
  referenced_security_group_id = each.value
  tags                         = local.tags
}

locals {
  # Pods on managed nodes carry the node security group and the cluster's primary one.
  node_security_groups = {
    nodes   = module.eks.node_security_group_id
    cluster = module.eks.cluster_primary_security_group_id
  }
}

module "database" {
  source  = "terraform-aws-modules/rds/aws"
  version = "~> 7.2"

  identifier = var.name

  engine               = "postgres"
  engine_version       = var.database.engine_version
  family               = "postgres${var.database.engine_version}"
  major_engine_version = var.database.engine_version
  instance_class       = var.database.instance_class

  allocated_storage     = var.database.allocated_storage_gb
  max_allocated_storage = var.database.max_allocated_storage_gb
  storage_type          = "gp3"
  storage_encrypted     = true
  kms_key_id            = aws_kms_key.this.arn

  db_name  = "airflow"
  username = "mlwp_admin"
  port     = 5432

  # RDS keeps the master password in Secrets Manager (encrypted with the deployment key) and
  # rotates it; Terraform never sees it.
  manage_master_user_password   = true
  master_user_secret_kms_key_id = aws_kms_key.this.arn

  multi_az               = var.database.multi_az
  db_subnet_group_name   = module.vpc.database_subnet_group_name
  vpc_security_group_ids = [aws_security_group.database.id]
  publicly_accessible    = false

  backup_retention_period  = var.database.backup_retention_days
  backup_window            = "03:00-04:00"
  maintenance_window       = "sun:04:30-sun:05:30"
  copy_tags_to_snapshot    = true
  delete_automated_backups = false
  deletion_protection      = var.database.deletion_protection
  skip_final_snapshot      = false

  final_snapshot_identifier_prefix = "${var.name}-final"

  auto_minor_version_upgrade          = true
  iam_database_authentication_enabled = true

  performance_insights_enabled          = true
  performance_insights_retention_period = 7
  performance_insights_kms_key_id       = aws_kms_key.this.arn
  create_monitoring_role                = true
  monitoring_interval                   = 60

  enabled_cloudwatch_logs_exports        = ["postgresql", "upgrade"]
  create_cloudwatch_log_group            = true
  cloudwatch_log_group_retention_in_days = var.log_retention_in_days
  cloudwatch_log_group_kms_key_id        = aws_kms_key.this.arn

  parameters = [
    # Clients must use TLS (sslmode=require in every URL the chart builds).
    { name = "rds.force_ssl", value = "1" },
    { name = "log_min_duration_statement", value = "1000" },
  ]

  tags = local.tags
}
