// Validates prometheus-operator resources (ServiceMonitor, PodMonitor, PrometheusRule)
// against the schemas generated from the operator's CRDs
// (@kubernetes-models/prometheus-operator, pinned in package-lock.json). Offline.
// Input: a JSON file holding an array of resources (deploy/validate.sh converts YAML).
// These schemas check types, required fields, enums and patterns; unlike
// kubernetes-validate --strict they do not reject unknown fields, so validate.sh also
// runs the rule groups through `promtool check rules`, which does.
import { readFileSync } from "node:fs";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";
import { PodMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PodMonitor";
import { PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule";

const kinds = { ServiceMonitor, PodMonitor, PrometheusRule };
const [file, label] = process.argv.slice(2);
const docs = JSON.parse(readFileSync(file, "utf8"));
let failed = 0;
for (const doc of docs) {
  const name = `${doc.kind}/${doc.metadata?.name}`;
  const Model = kinds[doc.kind];
  if (doc.apiVersion !== "monitoring.coreos.com/v1" || !Model) {
    console.error(`${label}: ${name}: no schema for ${doc.apiVersion} ${doc.kind}`);
    failed++;
    continue;
  }
  try {
    new Model(doc).validate();
  } catch (e) {
    console.error(`${label}: ${name}: ${e.message}`);
    failed++;
  }
}
if (failed) process.exit(1);
console.log(`${label}: ${docs.length} prometheus-operator resource(s) match the CRD schemas`);
