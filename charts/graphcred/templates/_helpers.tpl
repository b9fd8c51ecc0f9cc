{{- define "graphcred.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "graphcred.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "graphcred.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "graphcred.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "graphcred.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The rules on namespaced objects: the same for a ClusterRole or a per-namespace Role. */}}
{{- define "graphcred.namespacedRules" -}}
- apiGroups: [graphcred.io]
  resources: [graphappcredentials]
  verbs: [get, list, watch]
# status: merge patches only (kopf writes nothing to the objects)
- apiGroups: [graphcred.io]
  resources: [graphappcredentials/status]
  verbs: [patch]
# The token Secret's owner reference sets blockOwnerDeletion; the OwnerReferencesPermissionEnforcement admission
# plugin (OpenShift) allows that only to who may update the owner's finalizers. graphcred adds no finalizers.
- apiGroups: [graphcred.io]
  resources: [graphappcredentials/finalizers]
  verbs: [update]
- apiGroups: [""]
  resources: [secrets]
  # patch: token Secrets are patched (merge patch), so what other tools add survives; delete: only its own old
  # token Secret after spec.secretName changed, or to re-create it when spec.secretTemplate.type changed
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
{{- if .Values.workloadIdentity.enabled }}
# Workload identity: read a credential's ServiceAccount (its client-id annotation), watch ServiceAccount metadata so
# an annotation change wakes the credential, and request its short-lived token. Powerful (a token for any
# ServiceAccount in scope), hence only with workloadIdentity.enabled.
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [serviceaccounts/token]
  verbs: [create]
{{- end }}
{{- if .Values.consumerWarnings.enabled }}
# Consumer warnings: list and watch pods to find those reading a token Secret through subPath, env or envFrom.
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
{{- end }}
{{- if .Values.restartTargets.enabled }}
# Restart targets: read a workload (is the rollout graphcred started last still in progress?) and merge-patch its pod
# template's graphcred.io/restarted-at annotation. A ReplicaSet is only read, to find the Deployment of a pod the
# consumer watch flags (restartUnrefreshable). Each target is read by name: no list or watch.
- apiGroups: [apps]
  resources: [deployments, statefulsets, daemonsets]
  verbs: [get, patch]
- apiGroups: [apps]
  resources: [replicasets]
  verbs: [get]
{{- end }}
{{- end -}}

{{/* Where ClusterGraphApps' Secrets and ServiceAccounts live: clusterApps.resourceNamespace, else the release's. */}}
{{- define "graphcred.clusterResourceNamespace" -}}
{{- .Values.clusterApps.resourceNamespace | default .Release.Namespace -}}
{{- end -}}
