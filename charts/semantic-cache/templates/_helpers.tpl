{{/*
Names. The runbook addresses the router by fixed names: with release "semantic-router" the
Deployment is "semantic-router" (the release name, not "<release>-<chart>") and the pods carry
app=semantic-router and app.kubernetes.io/name=semantic-router whatever the chart is called.
*/}}
{{- define "semantic-cache.name" -}}
{{- .Values.nameOverride | default "semantic-router" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "semantic-cache.fullname" -}}
{{- .Values.fullnameOverride | default .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "semantic-cache.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "semantic-cache.configMapName" -}}
{{- printf "%s-config" (include "semantic-cache.fullname" .) -}}
{{- end -}}

{{- define "semantic-cache.envoyConfigMapName" -}}
{{- printf "%s-envoy" (include "semantic-cache.fullname" .) -}}
{{- end -}}

{{- define "semantic-cache.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "semantic-cache.fullname" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{/* Selector labels: fixed for the life of a release (Deployment selectors are immutable). */}}
{{- define "semantic-cache.selectorLabels" -}}
app: {{ include "semantic-cache.name" . }}
app.kubernetes.io/name: {{ include "semantic-cache.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "semantic-cache.labels" -}}
{{ include "semantic-cache.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: semantic-cache
helm.sh/chart: {{ include "semantic-cache.chart" . }}
{{- end -}}

{{/*
Labels of objects that are not the router (the Milvus resource): no app / name / instance
labels, which the Milvus Operator could carry over to the Milvus pods and their selectors.
*/}}
{{- define "semantic-cache.ownerLabels" -}}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: semantic-cache
helm.sh/chart: {{ include "semantic-cache.chart" . }}
{{- end -}}

{{/*
Host names the admin API answers to (SEMANTIC_CACHE_ADMIN_ALLOWED_HOSTS, comma-separated): with a
token the admin Service's DNS names, so in-cluster callers reach it by name, then
admin.allowedHosts. Empty on loopback without extra names.
*/}}
{{- define "semantic-cache.adminHosts" -}}
{{- $hosts := list -}}
{{- if .Values.admin.tokenSecret.name -}}
{{- $svc := printf "%s-admin" (include "semantic-cache.fullname" .) -}}
{{- $ns := .Release.Namespace -}}
{{- $hosts = list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns) -}}
{{- end -}}
{{- concat $hosts .Values.admin.allowedHosts | uniq | join "," -}}
{{- end -}}

{{- define "semantic-cache.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) -}}
{{- end -}}

{{/*
A number from values as text. Values arrive as float64 (YAML -> JSON), and printing 1048576
directly gives "1.048576e+06"; whole numbers are printed as integers.
*/}}
{{- define "semantic-cache.num" -}}
{{- if and (kindIs "float64" .) (eq . (floor .)) -}}
{{- printf "%d" (int64 .) -}}
{{- else -}}
{{- toString . -}}
{{- end -}}
{{- end -}}

{{/*
Milvus endpoint for milvus.yaml, from the one Milvus source in use:
  bundled chart    <milvus fullname>.<ns>.svc.cluster.local, computed like the milvus chart's
                   own "milvus.fullname" (fullnameOverride, else the release name when it
                   contains the chart name, else <release>-milvus);
  Milvus Operator  <resource name>-milvus.<ns>.svc.cluster.local (the operator's Service);
  external         externalMilvus.host, default milvus-semantic-cache.<ns>.svc.cluster.local
                   (the runbook's `helm install milvus-semantic-cache milvus/milvus`).
milvusClient.connection.host / port override all of them.
*/}}
{{- define "semantic-cache.milvusOperatorName" -}}
{{- .Values.milvusOperator.name | default (printf "milvus-%s" .Values.milvusOperator.mode) -}}
{{- end -}}

{{- define "semantic-cache.milvusHost" -}}
{{- $ns := .Release.Namespace -}}
{{- if .Values.milvusClient.connection.host -}}
{{- .Values.milvusClient.connection.host -}}
{{- else if .Values.milvus.enabled -}}
{{- $name := .Values.milvus.nameOverride | default "milvus" -}}
{{- $full := "" -}}
{{- if .Values.milvus.fullnameOverride -}}
{{- $full = .Values.milvus.fullnameOverride -}}
{{- else if contains $name .Release.Name -}}
{{- $full = .Release.Name -}}
{{- else -}}
{{- $full = printf "%s-%s" .Release.Name $name -}}
{{- end -}}
{{- printf "%s.%s.svc.cluster.local" ($full | trunc 63 | trimSuffix "-") $ns -}}
{{- else if .Values.milvusOperator.enabled -}}
{{- printf "%s-milvus.%s.svc.cluster.local" (include "semantic-cache.milvusOperatorName" .) $ns -}}
{{- else -}}
{{- .Values.externalMilvus.host | default (printf "milvus-semantic-cache.%s.svc.cluster.local" $ns) -}}
{{- end -}}
{{- end -}}

{{- define "semantic-cache.milvusPort" -}}
{{- if .Values.milvusClient.connection.port -}}
{{- include "semantic-cache.num" .Values.milvusClient.connection.port -}}
{{- else if .Values.milvus.enabled -}}
{{- include "semantic-cache.num" (.Values.milvus.service.port | default 19530) -}}
{{- else if .Values.milvusOperator.enabled -}}
19530
{{- else -}}
{{- include "semantic-cache.num" .Values.externalMilvus.port -}}
{{- end -}}
{{- end -}}

{{/* Cross-field checks the schema cannot express; rendered (as nothing) by the Deployment. */}}
{{- define "semantic-cache.validate" -}}
{{- $hpa := .Values.autoscaling -}}
{{- if and $hpa.enabled (gt (int $hpa.minReplicas) (int $hpa.maxReplicas)) -}}
{{- fail (printf "autoscaling.minReplicas (%d) is above autoscaling.maxReplicas (%d)" (int $hpa.minReplicas) (int $hpa.maxReplicas)) -}}
{{- end -}}
{{- if and .Values.milvus.enabled .Values.milvusOperator.enabled -}}
{{- fail "milvus.enabled (bundled chart) and milvusOperator.enabled are exclusive: choose one Milvus" -}}
{{- end -}}
{{- if and .Values.milvus.pulsar.enabled .Values.milvus.pulsarv3.enabled -}}
{{- fail "milvus.pulsar.enabled and milvus.pulsarv3.enabled are both true: the two Pulsars conflict; keep pulsarv3 only (Milvus 2.4+)" -}}
{{- end -}}
{{- if and .Values.milvus.enabled (not .Values.milvusClient.connection.host) -}}
{{- $milvusService := index (splitList "." (include "semantic-cache.milvusHost" .)) 0 -}}
{{- if eq $milvusService (include "semantic-cache.fullname" .) -}}
{{- fail (printf "the bundled milvus chart names its Service %q, like this chart's Service: with a release name containing \"milvus\" set milvus.fullnameOverride (or fullnameOverride), or choose another release name" $milvusService) -}}
{{- end -}}
{{- end -}}
{{- /*
The grace period covers, in turn: the processor's preStop, which waits for Envoy to exit (at most
drain.minSeconds + drain.maxSeconds, see files/drain.sh); then, on SIGTERM, the processor's own
shutdown, which finishes streams and pending stores for up to server.shutdown_grace_seconds (30 s
by default, extproc/app.py serve); and 10 s for the polling steps and closing the backend.
*/ -}}
{{- $server := (.Values.cache.settings | default dict).server | default dict -}}
{{- $processorGrace := ceil ($server.shutdown_grace_seconds | default 30) -}}
{{- $needed := add .Values.drain.minSeconds .Values.drain.maxSeconds $processorGrace 10 -}}
{{- if lt (int64 .Values.terminationGracePeriodSeconds) (int64 $needed) -}}
{{- fail (printf "terminationGracePeriodSeconds (%s) must be at least drain.minSeconds + drain.maxSeconds + the processor's cache.settings.server.shutdown_grace_seconds (%s) + 10 = %s" (include "semantic-cache.num" .Values.terminationGracePeriodSeconds) (include "semantic-cache.num" $processorGrace) (include "semantic-cache.num" $needed)) -}}
{{- end -}}
{{- end -}}

{{/* A ratio as a percentage for alert texts: 0.2 -> 20%. */}}
{{- define "semantic-cache.percent" -}}
{{- printf "%s%%" (include "semantic-cache.num" (mulf . 100.0)) -}}
{{- end -}}

{{/* runbook_url of an alert: metrics.prometheusRule.runbookUrl#anchor, when set. Args: (list $pr anchor). */}}
{{- define "semantic-cache.runbookUrl" -}}
{{- $base := (index . 0).runbookUrl -}}
{{- if $base }}
runbook_url: {{ printf "%s#%s" $base (index . 1) | quote }}
{{- end -}}
{{- end -}}
