{{/* Names and labels shared by every object of the chart. */}}

{{- define "mlwp.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* "<fullname>-<component>", for component in serving, mlflow, roles-sync. */}}
{{- define "mlwp.componentName" -}}
{{- printf "%s-%s" (include "mlwp.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mlwp.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "mlwp.labels" -}}
{{ include "mlwp.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- with .root.Values.labels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* An image reference: repository:tag, or repository@digest when a digest is given. */}}
{{- define "mlwp.image" -}}
{{- if .digest -}}
{{- printf "%s@%s" .repository .digest -}}
{{- else -}}
{{- printf "%s:%s" .repository .tag -}}
{{- end -}}
{{- end -}}

{{/* The ServiceAccount name of a component (.key: its key under serviceAccounts). */}}
{{- define "mlwp.serviceAccountName" -}}
{{- $account := index .root.Values.serviceAccounts .key -}}
{{- if $account.create -}}
{{- default (include "mlwp.componentName" .) $account.name -}}
{{- else -}}
{{- required (printf "serviceAccounts.%s.name is required when serviceAccounts.%s.create is false" .key .key) $account.name -}}
{{- end -}}
{{- end -}}

{{/* Annotations of a ServiceAccount: IRSA's role ARN when given, plus any others. */}}
{{- define "mlwp.serviceAccountAnnotations" -}}
{{- $account := index .root.Values.serviceAccounts .key -}}
{{- $annotations := deepCopy ($account.annotations | default dict) -}}
{{- if $account.roleArn -}}
{{- $_ := set $annotations "eks.amazonaws.com/role-arn" $account.roleArn -}}
{{- end -}}
{{- if $annotations }}
annotations:
  {{- toYaml $annotations | nindent 2 }}
{{- end }}
{{- end -}}

{{/* An env entry read from a Secret key, the secret given by reference (existingSecret). */}}
{{- define "mlwp.secretEnv" -}}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ .secret }}
      key: {{ .key }}
{{- end -}}

{{/* The URL serving and the roles-sync Job use for MLflow: the chart's own server by default. */}}
{{- define "mlwp.mlflowUrl" -}}
{{- if .Values.mlflow.trackingUri -}}
{{- .Values.mlflow.trackingUri -}}
{{- else -}}
{{- printf "http://%s:%d" (include "mlwp.componentName" (dict "root" . "component" "mlflow")) (int .Values.mlflow.service.port) -}}
{{- end -}}
{{- end -}}

{{/* The pod and container security contexts of every workload: non-root, no privilege
escalation, no capabilities, read-only root filesystem, the runtime's seccomp profile. */}}
{{- define "mlwp.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid }}
runAsGroup: {{ .gid }}
fsGroup: {{ .gid }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "mlwp.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: {{ .uid }}
runAsGroup: {{ .gid }}
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Whether the chart registers the deploy task's serving admin key (serving runs here). */}}
{{- define "mlwp.servingAdminKey.enabled" -}}
{{- if and .Values.servingAdminKey.enabled .Values.serving.enabled -}}true{{- end -}}
{{- end -}}

{{/* The Secret holding the deploy task's serving admin key under `token`. */}}
{{- define "mlwp.servingAdminKey.secretName" -}}
{{- default (include "mlwp.componentName" (dict "root" . "component" "serving-admin-key")) .Values.servingAdminKey.existingSecret -}}
{{- end -}}
