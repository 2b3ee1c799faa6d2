{{/* The chart's name. */}}
{{- define "bitcoin-controller.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release's full name, prefix of every object name: the release name when
it contains the chart name (a release named bitcoin-controller gives the
names of manifests/), else <release>-<chart>.
*/}}
{{- define "bitcoin-controller.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "bitcoin-controller.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of every object. Not app.kubernetes.io/managed-by=bitcoin-controller:
that label marks the objects the controller owns (it caches only those).
*/}}
{{- define "bitcoin-controller.labels" -}}
helm.sh/chart: {{ include "bitcoin-controller.chart" . }}
{{ include "bitcoin-controller.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "bitcoin-controller.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bitcoin-controller.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "bitcoin-controller.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "bitcoin-controller.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Name of the leader-election Lease. */}}
{{- define "bitcoin-controller.leaseName" -}}
{{- default (include "bitcoin-controller.fullname" .) .Values.leaderElection.id }}
{{- end }}

{{/* The RBAC subject: the controller's ServiceAccount. */}}
{{- define "bitcoin-controller.subject" -}}
- kind: ServiceAccount
  name: {{ include "bitcoin-controller.serviceAccountName" . }}
  namespace: {{ .Release.Namespace }}
{{- end }}

{{/*
What the controller may do with networks and the objects they own: the rules
of manifests/rbac.yaml's ClusterRole bitcoin-controller.
*/}}
{{- define "bitcoin-controller.rules" -}}
# The custom resource: read it, write only its status.
- apiGroups: ["bitcoincontroller.christianb93.github.com"]
  resources: ["bitcoinnetworks"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["bitcoincontroller.christianb93.github.com"]
  resources: ["bitcoinnetworks/status"]
  verbs: ["get", "update", "patch"]
# Objects a network owns. No delete of StatefulSets: the garbage collector
# removes owned objects through their owner references when the network
# goes. Services: delete too, for the <name>-rpc Service when spec.service
# is removed from a network that stays (only a Service the network
# controls, by uid precondition).
- apiGroups: ["apps"]
  resources: ["statefulsets"]
  verbs: ["get", "list", "watch", "create", "update", "patch"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
# Pods are only read: readiness and IPs feed the status and the mesh.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
# Events about networks; listing reads the StatefulSet controller's
# FailedCreate Events when a network's pods cannot be created.
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch", "update", "list"]
{{- end }}

{{/* RPC credentials: the rules of ClusterRole bitcoin-controller-secrets. */}}
{{- define "bitcoin-controller.secretRules" -}}
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "update", "patch"]
{{- end }}
