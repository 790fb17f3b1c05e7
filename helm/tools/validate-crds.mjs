// Validate rendered objects of CRD kinds (which kubernetes-validate only warns about) with
// the @kubernetes-models/* validators: node validate-crds.mjs NODE_MODULES < objects.json
// Prints one line per object; exits 1 when any is invalid, 2 on an unknown kind.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const modules = process.argv[2];
const models = {
  "monitoring.coreos.com/v1/ServiceMonitor": "prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor.js",
  "monitoring.coreos.com/v1/PrometheusRule": "prometheus-operator/monitoring.coreos.com/v1/PrometheusRule.js",
  "monitoring.coreos.com/v1/Probe": "prometheus-operator/monitoring.coreos.com/v1/Probe.js",
  "keda.sh/v1alpha1/ScaledObject": "keda/keda.sh/v1alpha1/ScaledObject.js",
  "gateway.networking.k8s.io/v1/HTTPRoute": "gateway-api/gateway.networking.k8s.io/v1/HTTPRoute.js",
};

const objects = JSON.parse(readFileSync(0, "utf8"));
let status = 0;
for (const obj of objects) {
  const key = `${obj.apiVersion}/${obj.kind}`;
  if (!(key in models)) {
    console.log(`UNKNOWN ${key}`);
    status = 2;
    continue;
  }
  const mod = await import(pathToFileURL(join(modules, "@kubernetes-models", models[key])).href);
  try {
    new mod[obj.kind](obj).validate();
    console.log(`OK ${key} ${obj.metadata.name}`);
  } catch (err) {
    console.log(`INVALID ${key} ${obj.metadata.name}: ${err.message}`);
    status = Math.max(status, 1);
  }
}
process.exit(status);
