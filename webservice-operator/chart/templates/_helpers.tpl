{{/*
Helpers shared by every template. They name nothing WebService-specific, so the chart works for
any operator built on cuebe: copy it, change Chart.yaml and the image, and regenerate files/.
*/}}

{{- define "cuebe-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "cuebe-operator.fullname" -}}
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

{{- define "cuebe-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cuebe-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "cuebe-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "cuebe-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: cuebe
{{- end }}

{{- define "cuebe-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "cuebe-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name: set it to an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "cuebe-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The CRDs of files/crds.yaml, parsed: one dict per document. */}}
{{- define "cuebe-operator.crds" -}}
{{- $crds := list }}
{{- range $doc := regexSplit "(?m)^---[ \t]*$" (.Files.Get "files/crds.yaml") -1 }}
{{- $crd := fromYaml $doc }}
{{- if $crd.kind }}
{{- $crds = append $crds $crd }}
{{- end }}
{{- end }}
{{- if not $crds }}
{{- fail "files/crds.yaml holds no CustomResourceDefinition: write it with `<operator> crd > files/crds.yaml`" }}
{{- end }}
{{- toJson (dict "items" $crds) }}
{{- end }}

{{/* The abstractions' CRDs (those the webhook validates): every CRD but cuebe's own. */}}
{{- define "cuebe-operator.abstractionCrds" -}}
{{- $abstractions := list }}
{{- range (include "cuebe-operator.crds" . | fromJson).items }}
{{- if ne .spec.group "cuebe.dev" }}
{{- $abstractions = append $abstractions . }}
{{- end }}
{{- end }}
{{- toJson (dict "items" $abstractions) }}
{{- end }}

{{- define "cuebe-operator.webhookName" -}}
{{- printf "%s-webhook" (include "cuebe-operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "cuebe-operator.modulePolicyConfigMap" -}}
{{- if .Values.modulePolicy.existingConfigMap }}
{{- .Values.modulePolicy.existingConfigMap }}
{{- else if .Values.modulePolicy.policy }}
{{- printf "%s-module-policy" (include "cuebe-operator.fullname" .) }}
{{- end }}
{{- end }}

{{- define "cuebe-operator.moduleCAConfigMap" -}}
{{- if .Values.moduleCA.existingConfigMap }}
{{- .Values.moduleCA.existingConfigMap }}
{{- else if .Values.moduleCA.pem }}
{{- printf "%s-module-ca" (include "cuebe-operator.fullname" .) }}
{{- end }}
{{- end }}
