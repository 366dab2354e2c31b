/**
 * The live player page: logs in, lists the user's players and shows each live (status, song,
 * ticking position, volume, connection) with controls. Everything it shows comes from
 * verified messages only.
 *
 * Login: `config.json` (served next to the page) says where the authz service is and whether
 * the development issuer may be used; in production replace `devToken` by your app's login
 * (e.g. MSAL's `acquireTokenSilent`, see the README).
 */
import { AmoraClient, positionAt, type Action, type ConnectionInfo, type ConnectionStatus, type DeviceState } from "../src/index.js";

interface PageConfig {
  /** Base URL of the authz service ("" = this origin). */
  authz_url: string;
  /** Development users offered by the local stack's issuer (absent in production). */
  dev_users?: string[];
}

const $ = <T extends HTMLElement>(sel: string, root: ParentNode = document): T => root.querySelector(sel) as T;

function fmt(ms: number | undefined): string {
  if (ms === undefined) return "–";
  const s = Math.floor(ms / 1000);
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

async function devToken(authz: string, user: string): Promise<string> {
  const response = await fetch(`${authz}/dev-issuer/token`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ username: user }),
  });
  if (!response.ok) throw new Error(`development issuer answered ${response.status}`);
  return ((await response.json()) as { access_token: string }).access_token;
}

function card(deviceId: string): HTMLElement {
  const el = document.createElement("section");
  el.className = "player";
  el.dataset["deviceId"] = deviceId;
  el.innerHTML = `
    <h2><span class="name"></span><span class="online" data-online="unknown">unknown</span></h2>
    <div class="status">waiting for state…</div>
    <div class="song"><div class="title"></div><div class="artist"></div></div>
    <div class="row"><span class="position">–</span><input class="seek" type="range" min="0" max="0" value="0" aria-label="position"><span class="duration">–</span></div>
    <div class="controls">
      <button data-action="previous">Prev</button>
      <button data-action="play">Play</button>
      <button data-action="pause">Pause</button>
      <button data-action="next">Next</button>
    </div>
    <div class="row"><span>volume <b class="volume">–</b></span><input class="volume-slider" type="range" min="0" max="100" value="0" aria-label="volume"></div>`;
  $(".name", el).textContent = deviceId;
  return el;
}

async function main(): Promise<void> {
  const config = (await (await fetch("config.json")).json()) as PageConfig;
  const authz = config.authz_url.replace(/\/+$/, "");
  const params = new URLSearchParams(location.search);
  let user = params.get("user");
  const form = $<HTMLFormElement>("#login");
  if (user === null) {
    const select = $<HTMLSelectElement>("#user");
    for (const name of config.dev_users ?? []) select.add(new Option(name, name));
    form.hidden = false;
    user = await new Promise<string>((resolve) =>
      form.addEventListener("submit", (e) => {
        e.preventDefault();
        resolve(select.value);
      }),
    );
    form.hidden = true;
  }
  const name = user;
  $("#user-name").textContent = `signed in as ${name}`;
  const connection = $("#connection");
  const showConnection = (info: ConnectionInfo): void => {
    connection.dataset["state"] = info.state;
    connection.dataset["endpoint"] = info.endpoint ?? "";
    connection.dataset["error"] = info.error ?? "";
    connection.textContent = `${info.state}${info.endpoint ? ` · ${info.endpoint}` : ""}${info.error ? ` · ${info.error}` : ""}`;
  };
  const client = await AmoraClient.open(authz, () => devToken(authz, name), {
    clientName: "amora web page",
    reconnect: { initialDelayMs: 100, maxDelayMs: 5_000, connectTimeoutMs: 5_000 },
    keepaliveS: 5,
    logger: console,
    onConnectionChange: showConnection,
  });
  (window as unknown as { amora: AmoraClient }).amora = client;
  showConnection(client.connection);

  const main = $("#players");
  const cards = new Map<string, HTMLElement>();
  const states = new Map<string, DeviceState>();
  for (const deviceId of [...client.session.devices.keys()].sort()) {
    const el = card(deviceId);
    cards.set(deviceId, el);
    main.append(el);
    const send = (action: Action): void => {
      client.command(deviceId, action).catch((error: Error) => ($("#error").textContent = `${deviceId}: ${error.name}: ${error.message}`));
    };
    el.querySelectorAll<HTMLButtonElement>("button[data-action]").forEach((b) =>
      b.addEventListener("click", () => send({ type: b.dataset["action"] as "play" | "pause" | "next" | "previous" })),
    );
    $<HTMLInputElement>(".volume-slider", el).addEventListener("change", (e) => send({ type: "set_volume", volume: Number((e.target as HTMLInputElement).value) }));
    $<HTMLInputElement>(".seek", el).addEventListener("change", (e) => send({ type: "seek", position_ms: Number((e.target as HTMLInputElement).value) }));
  }

  const showState = (state: DeviceState): void => {
    const el = cards.get(state.device_id);
    if (el === undefined) return;
    states.set(state.device_id, state);
    el.dataset["status"] = state.status;
    el.dataset["version"] = String(state.version);
    $(".status", el).textContent = state.status + (state.error ? ` · ${state.error}` : "");
    $(".title", el).textContent = state.song?.title ?? state.song?.file ?? "(nothing loaded)";
    $(".artist", el).textContent = [state.song?.artist, state.song?.album].filter(Boolean).join(" — ");
    $(".volume", el).textContent = state.volume === undefined ? "–" : String(state.volume);
    const slider = $<HTMLInputElement>(".volume-slider", el);
    if (document.activeElement !== slider) slider.value = String(state.volume ?? 0);
    $(".duration", el).textContent = fmt(state.song?.duration_ms);
    $<HTMLInputElement>(".seek", el).max = String(state.song?.duration_ms ?? 0);
  };
  const showStatus = (status: ConnectionStatus): void => {
    const badge = cards.get(status.device_id)?.querySelector<HTMLElement>(".online");
    if (!badge) return;
    badge.dataset["online"] = String(status.online);
    badge.textContent = status.online ? "online" : `offline${status.reason ? ` (${status.reason})` : ""}`;
  };
  // The position ticks locally between messages (interpolated from the last verified state).
  setInterval(() => {
    const now = Date.now();
    for (const [id, state] of states) {
      const el = cards.get(id)!;
      const position = positionAt(state, now);
      $(".position", el).textContent = fmt(position);
      const seek = $<HTMLInputElement>(".seek", el);
      if (document.activeElement !== seek) seek.value = String(position ?? 0);
    }
    const rejected = $("#rejected");
    rejected.dataset["count"] = String(client.stats.invalid);
    rejected.textContent = `rejected messages: ${client.stats.invalid}`;
  }, 250);

  for await (const event of client.watch()) {
    if (event.kind === "state") showState(event.state);
    else showStatus(event.status);
  }
}

main().catch((error: Error) => {
  $("#error").textContent = `${error.name}: ${error.message}`;
  console.error(error);
});
