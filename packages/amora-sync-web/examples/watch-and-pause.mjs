// Watch the first of a user's players, then pause it, from Node against the local stack:
//   node examples/watch-and-pause.mjs STATE_DIR/stack.json [user]
import { readFileSync } from "node:fs";

import { AmoraClient } from "@amora/sync-web";

const stack = JSON.parse(readFileSync(process.argv[2], "utf8"));
const user = process.argv[3] ?? "alice";

// In a browser app this is your login's access token (e.g. MSAL); here the stack's dev issuer.
async function token() {
  const response = await fetch(`${stack.authz_url}/dev-issuer/token`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ username: user }),
  });
  return (await response.json()).access_token;
}

// Browsers verify the broker with their own trust store; Node is given the development CA.
const client = await AmoraClient.open(stack.authz_url, token, {
  mqttOptions: { ca: readFileSync(stack.broker.ca_file) },
});
const [device] = [...client.session.devices.keys()].sort();
for await (const event of client.watch([device])) {
  if (event.kind === "state") {
    console.log(`${device} is ${event.state.status} (version ${event.state.version})`);
    break;
  }
}
const answer = await client.command(device, { type: "pause" });
console.log(`pause: ${answer.status}`);
await client.close();
