// Validate Kubernetes manifests against the API's and prometheus-operator's schemas (kubernetes-models).
// Input on stdin: a JSON array of manifests. Output: one line per manifest, "ok" or its errors.
// Exit status 1 if any is invalid or of a kind this script does not know.
import { Deployment } from "kubernetes-models/apps/v1/Deployment";
import { Service } from "kubernetes-models/v1/Service";
import { PodMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PodMonitor";
import { PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";

const models = {
  "apps/v1 Deployment": Deployment,
  "v1 Service": Service,
  "monitoring.coreos.com/v1 PodMonitor": PodMonitor,
  "monitoring.coreos.com/v1 PrometheusRule": PrometheusRule,
  "monitoring.coreos.com/v1 ServiceMonitor": ServiceMonitor,
};

let input = "";
for await (const chunk of process.stdin) input += chunk;
let failed = false;
for (const manifest of JSON.parse(input)) {
  const key = `${manifest.apiVersion} ${manifest.kind}`;
  const name = `${key} ${manifest.metadata?.name}`;
  const Model = models[key];
  if (!Model) {
    console.log(`${name}: no schema known for ${key}`);
    failed = true;
    continue;
  }
  try {
    new Model(manifest).validate();
    console.log(`${name}: ok`);
  } catch (error) {
    console.log(`${name}: ${error.message}`);
    failed = true;
  }
}
process.exit(failed ? 1 : 0);
