// Independent check of a key-based Sigstore bundle with @sigstore/verify (the sigstore-js
// verifier), used by tests/test_sign_verify.py. Usage:
//   node verify_bundle.mjs BUNDLE.json ARTIFACT PUBLIC_KEY.pem
// Prints {"ok":true} or {"ok":false,"error":...}; exit status 0 or 1.
import { readFileSync } from "node:fs";
import { createPublicKey } from "node:crypto";
import { bundleFromJSON } from "@sigstore/bundle";
import { Verifier, toSignedEntity, toTrustMaterial } from "@sigstore/verify";

const [bundlePath, artifactPath, keyPath] = process.argv.slice(2);
try {
  const bundle = bundleFromJSON(JSON.parse(readFileSync(bundlePath, "utf8")));
  const artifact = readFileSync(artifactPath);
  const key = createPublicKey(readFileSync(keyPath));
  const hint = bundle.verificationMaterial.content.publicKey.hint;
  // Only this key, under only this hint; no transparency log or timestamps (offline, keyed).
  const trust = toTrustMaterial(
    { mediaType: "", certificateAuthorities: [], ctlogs: [], tlogs: [], timestampAuthorities: [] },
    (h) => {
      if (h !== hint) throw new Error(`unknown key hint ${h}`);
      return { publicKey: key, validFor: () => true };
    });
  new Verifier(trust, { tlogThreshold: 0, ctlogThreshold: 0, timestampThreshold: 0 })
    .verify(toSignedEntity(bundle, artifact));
  console.log(JSON.stringify({ ok: true }));
} catch (err) {
  console.log(JSON.stringify({ ok: false, error: String(err && err.message || err) }));
  process.exit(1);
}
