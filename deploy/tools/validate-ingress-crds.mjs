// Validates the ingress wiring under deploy/kubernetes/ext-authz against the schemas
// generated from the projects' CRDs, offline: Gateway API HTTPRoute (with the
// ExternalAuth filter of GEP-1494) and ReferenceGrant (@kubernetes-models/gateway-api),
// Traefik's Middleware (@kubernetes-models/traefik), pinned in package-lock.json.
// Envoy Gateway's SecurityPolicy has no schema package in any registry: it is checked
// for its shape by deploy/validate.sh instead, and reported as such.
// Input: a JSON file holding an array of resources (deploy/validate.sh converts YAML).
// These schemas check types, required fields, enums and patterns (not unknown keys:
// they do not set additionalProperties).
// The ExternalAuth filter is in Gateway API's experimental channel: the packaged schema
// (standard channel) has its `externalAuth` object but not `ExternalAuth` among the
// filter types. So each ExternalAuth filter's body is validated on its own against
// HTTPExternalAuthFilter, and the rest of the route without it.
import { readFileSync } from "node:fs";
import { HTTPRoute } from "@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1/HTTPRoute";
import { HTTPExternalAuthFilter } from "@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1/HTTPExternalAuthFilter";
import { ReferenceGrant } from "@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1beta1/ReferenceGrant";
import { Middleware } from "@kubernetes-models/traefik/traefik.io/v1alpha1/Middleware";

const kinds = {
  "gateway.networking.k8s.io/v1 HTTPRoute": HTTPRoute,
  "gateway.networking.k8s.io/v1beta1 ReferenceGrant": ReferenceGrant,
  "traefik.io/v1alpha1 Middleware": Middleware,
};
const [file, label] = process.argv.slice(2);
const docs = JSON.parse(readFileSync(file, "utf8"));

let failed = 0;
for (const doc of docs) {
  const name = `${doc.kind}/${doc.metadata?.name}`;
  const Model = kinds[`${doc.apiVersion} ${doc.kind}`];
  if (!Model) {
    console.error(`${label}: ${name}: no schema for ${doc.apiVersion} ${doc.kind}`);
    failed++;
    continue;
  }
  try {
    if (doc.kind === "HTTPRoute") {
      const route = structuredClone(doc);
      for (const rule of route.spec?.rules ?? []) {
        const external = (rule.filters ?? []).filter((f) => f.type === "ExternalAuth");
        for (const f of external) {
          if (!f.externalAuth) throw new Error("an ExternalAuth filter needs externalAuth");
          new HTTPExternalAuthFilter(f.externalAuth).validate();
        }
        if (rule.filters) rule.filters = rule.filters.filter((f) => f.type !== "ExternalAuth");
      }
      new Model(route).validate();
      continue;
    }
    new Model(doc).validate();
  } catch (e) {
    console.error(`${label}: ${name}: ${e.message}`);
    failed++;
  }
}
if (failed) process.exit(1);
console.log(`${label}: ${docs.length} Gateway API / Traefik resource(s) match the CRD schemas`);
