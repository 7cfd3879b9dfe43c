{{/*
Names and labels shared by every template (KubeRay's chart layout).
*/}}

{{/* The chart name, overridable. */}}
{{- define "kdigits.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The fully qualified app name: the release name, with the chart name unless the release name
already contains it. Truncated to leave room for suffixes (-minio, -ray-head-svc).
*/}}
{{- define "kdigits.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Chart name and version, for the helm.sh/chart label. */}}
{{- define "kdigits.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "kdigits.labels" -}}
helm.sh/chart: {{ include "kdigits.chart" . }}
{{ include "kdigits.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kdigits
{{- end }}

{{/* Labels that select this release's pods. */}}
{{- define "kdigits.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kdigits.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The controller's ServiceAccount. */}}
{{- define "kdigits.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kdigits.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The kdigits image (controller and Ray). */}}
{{- define "kdigits.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The Ray image: the kdigits image unless ray.image overrides it. */}}
{{- define "kdigits.rayImage" -}}
{{- if .Values.ray.image.repository }}
{{- printf "%s:%s" .Values.ray.image.repository (default .Chart.AppVersion .Values.ray.image.tag) }}
{{- else }}
{{- include "kdigits.image" . }}
{{- end }}
{{- end }}

{{/* The RayCluster's name; KubeRay names its head Service "<name>-head-svc". */}}
{{- define "kdigits.rayClusterName" -}}
{{- printf "%s-ray" (include "kdigits.fullname" .) }}
{{- end }}

{{/* The Ray Jobs API address the controller submits to. */}}
{{- define "kdigits.rayAddress" -}}
{{- if .Values.ray.address }}
{{- .Values.ray.address }}
{{- else }}
{{- printf "http://%s-head-svc.%s.svc:8265" (include "kdigits.rayClusterName" .) .Release.Namespace }}
{{- end }}
{{- end }}

{{/* MinIO's Service name. */}}
{{- define "kdigits.minioName" -}}
{{- printf "%s-minio" (include "kdigits.fullname" .) }}
{{- end }}

{{/* The S3 endpoint: the bundled MinIO's, or storage.s3.endpoint (empty: AWS). */}}
{{- define "kdigits.s3Endpoint" -}}
{{- if .Values.minio.enabled }}
{{- printf "http://%s.%s.svc:%v" (include "kdigits.minioName" .) .Release.Namespace .Values.minio.service.port }}
{{- else }}
{{- .Values.storage.s3.endpoint }}
{{- end }}
{{- end }}

{{/* The Secret holding S3 credentials; empty when the pods use ambient (IAM) credentials. */}}
{{- define "kdigits.s3Secret" -}}
{{- if .Values.minio.enabled }}
{{- default (include "kdigits.minioName" .) .Values.minio.existingSecret }}
{{- else }}
{{- .Values.storage.s3.existingSecret }}
{{- end }}
{{- end }}

{{/* KDIGITS_STORE_URL: s3://bucket[/prefix]. */}}
{{- define "kdigits.storeUrl" -}}
{{- $prefix := trimAll "/" .Values.storage.prefix }}
{{- if $prefix }}
{{- printf "s3://%s/%s" .Values.storage.bucket $prefix }}
{{- else }}
{{- printf "s3://%s" .Values.storage.bucket }}
{{- end }}
{{- end }}

{{/* Environment that reaches the object store: the controller and every Ray pod get it. */}}
{{- define "kdigits.storageEnv" -}}
- name: KDIGITS_STORE_URL
  value: {{ include "kdigits.storeUrl" . | quote }}
{{- with include "kdigits.s3Endpoint" . }}
- name: KDIGITS_S3_ENDPOINT
  value: {{ . | quote }}
{{- end }}
- name: AWS_DEFAULT_REGION
  value: {{ .Values.storage.region | quote }}
{{- with include "kdigits.s3Secret" . }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.storage.s3.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.storage.s3.secretAccessKeyKey }}
{{- end }}
{{- end }}

{{/* The pod-level security context every pod gets. */}}
{{- define "kdigits.podSecurityContext" -}}
{{- toYaml .Values.podSecurityContext }}
{{- end }}

{{/* The container-level security context every container gets. */}}
{{- define "kdigits.containerSecurityContext" -}}
{{- toYaml .Values.containerSecurityContext }}
{{- end }}

{{/* The label matchers that pick this release's controller metrics in PromQL. */}}
{{- define "kdigits.metricsSelector" -}}
{{- printf "job=\"%s\",namespace=\"%s\"" (include "kdigits.fullname" .) .Release.Namespace }}
{{- end }}
