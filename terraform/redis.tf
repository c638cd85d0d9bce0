################################################################################
# ElastiCache Redis: the Celery broker, login rate limits and serving's cache and limits
# (MLWP_REDIS_URL). TLS in transit, an AUTH token, encryption at rest, a replica in another AZ.
################################################################################

resource "random_password" "redis_auth_token" {
  # Bump redis_auth_token_version to issue a new token (see README: rotation).
  keepers = {
    version = var.redis_auth_token_version
  }

  # ElastiCache AUTH tokens: 16 to 128 printable characters, no @ " or /; letters and digits
  # keep the token safe inside a URL without escaping.
  length  = 64
  special = false
}

module "redis" {
  source  = "terraform-aws-modules/elasticache/aws"
  version = "~> 1.10"

  replication_group_id = var.name
  description          = "mlwp ${var.name}: Celery broker, rate limits, serving cache"

  engine         = "redis"
  engine_version = var.redis.engine_version
  node_type      = var.redis.node_type

  num_cache_clusters         = var.redis.num_cache_clusters
  multi_az_enabled           = var.redis.num_cache_clusters > 1
  automatic_failover_enabled = var.redis.num_cache_clusters > 1

  transit_encryption_enabled = true
  transit_encryption_mode    = "required"
  auth_token                 = random_password.redis_auth_token.result
  # A new token is added beside the old one, so clients keep working until they restart.
  auth_token_update_strategy = "ROTATE"
  at_rest_encryption_enabled = true
  kms_key_arn                = aws_kms_key.this.arn

  snapshot_retention_limit = var.redis.snapshot_retention_days
  snapshot_window          = "02:00-03:00"
  maintenance_window       = "sun:05:30-sun:06:30"
  apply_immediately        = false

  vpc_id = module.vpc.vpc_id
  security_group_rules = {
    for source, security_group_id in local.node_security_groups : "ingress_${source}" => {
      description                  = "Redis from the EKS ${source} security group"
      referenced_security_group_id = security_group_id
    }
  }

  create_subnet_group = false
  subnet_group_name   = module.vpc.elasticache_subnet_group_name

  create_parameter_group = true
  parameter_group_name   = "${var.name}-redis"
  parameter_group_family = "redis7"
  parameters = [
    # Celery and the rate limiter keep keys that must not be evicted silently.
    { name = "maxmemory-policy", value = "noeviction" },
  ]

  tags = local.tags
}

# The AUTH token for the chart: read it with External Secrets or `aws secretsmanager
# get-secret-value`, never from the Terraform state.
resource "aws_secretsmanager_secret" "redis_auth_token" {
  #checkov:skip=CKV2_AWS_57:Rotating an ElastiCache AUTH token takes a two-step ROTATE/SET on the replication group and a restart of every client; AWS provides no rotation function for it. Rotate with redis_auth_token_version (README)
  name_prefix             = "${var.name}/redis-auth-token-"
  description             = "AUTH token of the ElastiCache Redis of mlwp ${var.name}"
  kms_key_id              = aws_kms_key.this.arn
  recovery_window_in_days = 7
  tags                    = local.tags
}

resource "aws_secretsmanager_secret_version" "redis_auth_token" {
  secret_id     = aws_secretsmanager_secret.redis_auth_token.id
  secret_string = random_password.redis_auth_token.result
}
