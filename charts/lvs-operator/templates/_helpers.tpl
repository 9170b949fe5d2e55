{{/* Chart name, overridable. */}}
{{- define "lvs.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-qualified name: "lvs-operator" for a release called lvs-operator, else
     "<release>-lvs-operator" (Kubernetes names are limited to 63 characters). */}}
{{- define "lvs.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "lvs.agentName" -}}
{{- printf "%s-agent" (include "lvs.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "lvs.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "lvs.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: lvs-operator
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component (operator or agent); never change across upgrades. */}}
{{- define "lvs.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lvs.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "lvs.operatorServiceAccount" -}}
{{- default (include "lvs.fullname" .) .Values.serviceAccount.operator.name -}}
{{- end -}}

{{- define "lvs.agentServiceAccount" -}}
{{- default (include "lvs.agentName" .) .Values.serviceAccount.agent.name -}}
{{- end -}}

{{- define "lvs.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* agent.nodeSelector as the operator's --agent-node-selector (KEY=VALUE,...), so the
     operator plans for exactly the nodes that run an agent. */}}
{{- define "lvs.agentNodeSelectorFlag" -}}
{{- $pairs := list -}}
{{- range $k, $v := .Values.agent.nodeSelector -}}
{{- $pairs = append $pairs (printf "%s=%s" $k $v) -}}
{{- end -}}
{{- join "," $pairs -}}
{{- end -}}
