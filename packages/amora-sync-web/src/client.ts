/**
 * The client: session, connection loop over the session's `wss://` endpoints, verified fan-out
 * to watchers, and commands with correlation. Same semantics as the Python SDK's `AmoraClient`.
 */
import { Buffer } from "buffer";
import mqtt, { type IClientOptions, type IPublishPacket, type MqttClient } from "mqtt";

import { JSON_CODEC, MSGPACK, type Codec } from "./codec.js";
import { randomEpoch, Sender, verifyEnvelope } from "./envelope.js";
import {
  AmoraSyncError,
  AuthzUnavailableError,
  ClientClosedError,
  CommandExpiredError,
  CommandRejectedError,
  CommandTimeoutError,
  ConnectError,
  InvalidCommandError,
  OutboxFullError,
  ProtocolError,
  SessionError,
  UnknownDeviceError,
} from "./errors.js";
import { Backoff, DEFAULT_RECONNECT, LatestPerKeyQueue, sleep, type ReconnectPolicy } from "./flow.js";
import { EncryptionKey, SigningKey } from "./keys.js";
import { checkCommand, isCritical, messageToWire, type Action, type Command, type CommandResponse, type ConnectionStatus, type DeviceState } from "./messages.js";
import { refreshDelay, SessionApi, type DeviceInfo, type Session, type TokenProvider } from "./session.js";
import { commandsTopic, connectionTopic, parseTopic, responsesTopic, stateTopic } from "./topics.js";

/** What a watch yields: a verified state or a verified connection status. */
export type WatchEvent = { kind: "state"; state: DeviceState } | { kind: "connection"; status: ConnectionStatus };

export type ConnectionStateName = "connecting" | "connected" | "reconnecting" | "closed";

export interface ConnectionInfo {
  state: ConnectionStateName;
  /** The endpoint in use (connected) or last tried. */
  endpoint?: string;
  /** Why the last attempt or connection failed. */
  error?: string;
}

export interface ClientStats {
  received: number;
  delivered: number;
  /** Dropped because verification failed (bad signature, wrong key or topic, malformed). */
  invalid: number;
  /** Verified states or statuses dropped as duplicates or older versions. */
  stale: number;
  connects: number;
  sessionExchanges: number;
  sessionRefreshes: number;
  commandsSent: number;
}

export interface ClientOptions {
  /** Reconnect backoff and per-attempt bound. */
  reconnect?: Partial<ReconnectPolicy>;
  /** How long `open` waits for the first connection (ms); 0: do not wait. */
  connectTimeoutMs?: number;
  keepaliveS?: number;
  /** Refresh the session when this fraction of its life is left. */
  refreshMargin?: number;
  /** Bound of the outbox; more pending commands throw `OutboxFullError`. */
  maxPendingCommands?: number;
  maxWatchedDevices?: number;
  codec?: Codec;
  clientName?: string;
  /** Extra MQTT.js options (e.g. `ca` for Node; browsers verify with their own trust store). */
  mqttOptions?: Partial<IClientOptions>;
  fetch?: typeof fetch;
  /** Called on every connection state change, from the first attempt on (also before `open` returns). */
  onConnectionChange?: (info: ConnectionInfo) => void;
  logger?: Pick<Console, "debug" | "info" | "warn">;
}

export interface CommandOptions {
  /** Deadline for the final answer (ms); the command expires then and is never sent later. */
  timeoutMs?: number;
  /** MQTT QoS; critical actions default to 2, others to 1. */
  qos?: 1 | 2;
  /** Apply only if the device's state version still equals this. */
  ifVersion?: number;
  /** Seal the command to the device's encryption key. */
  seal?: boolean;
}

interface Pending {
  command: Command;
  device: DeviceInfo;
  qos: 1 | 2;
  seal: boolean;
  deadline: number;
  published: boolean;
  last?: CommandResponse;
  resolve: (r: CommandResponse) => void;
  reject: (e: Error) => void;
  timer: ReturnType<typeof setTimeout>;
}

const FINAL_OK = new Set(["succeeded", "duplicate"]);
const FINAL_BAD = new Set(["rejected", "failed"]);

/** A UUIDv7 (RFC 9562): 48-bit ms timestamp, version, variant, random bits. */
export function uuid7(ms: number): string {
  const b = crypto.getRandomValues(new Uint8Array(16));
  for (let i = 0; i < 6; i++) b[i] = Math.floor(ms / 2 ** (8 * (5 - i))) & 255;
  b[6] = (b[6]! & 0x0f) | 0x70;
  b[8] = (b[8]! & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** A stream of verified events for some devices: current state first, then only newer versions. */
export class Watch implements AsyncIterable<WatchEvent> {
  private readonly queue: LatestPerKeyQueue<string, WatchEvent>;
  constructor(
    private readonly client: AmoraClient,
    readonly deviceIds: ReadonlySet<string> | undefined,
    readonly includeConnection: boolean,
    maxDevices: number,
  ) {
    this.queue = new LatestPerKeyQueue(2 * maxDevices);
  }
  /** Waiting events replaced by newer ones (a slow consumer). */
  get superseded(): number {
    return this.queue.superseded;
  }
  wants(deviceId: string): boolean {
    return this.deviceIds === undefined || this.deviceIds.has(deviceId);
  }
  offer(event: WatchEvent): void {
    const id = event.kind === "state" ? event.state.device_id : event.status.device_id;
    this.queue.put(`${event.kind}:${id}`, event);
  }
  close(): void {
    this.queue.close();
    this.client.removeWatch(this);
  }
  async *[Symbol.asyncIterator](): AsyncIterator<WatchEvent> {
    try {
      for (;;) {
        const event = await this.queue.get();
        if (event === undefined) return;
        yield event;
      }
    } finally {
      this.close();
    }
  }
}

/**
 * An Amora session: watch players and send them commands.
 *
 * `await AmoraClient.open(authzUrl, tokenProvider)` exchanges the user's token for a session,
 * connects to the first reachable `wss://` endpoint, subscribes to the user's devices and
 * from then on keeps the connection (backoff with full jitter, failover, resubscribe and
 * resync) and the session (refresh before expiry, exchange again when refused).
 */
export class AmoraClient {
  readonly stats: ClientStats = { received: 0, delivered: 0, invalid: 0, stale: 0, connects: 0, sessionExchanges: 0, sessionRefreshes: 0, commandsSent: 0 };
  private readonly api: SessionApi;
  private readonly policy: ReconnectPolicy;
  private readonly signingKey = SigningKey.generate();
  private readonly encryptionKey = EncryptionKey.generate();
  private readonly log: Pick<Console, "debug" | "info" | "warn">;
  private sessionValue: Session | undefined;
  private sender: Sender | undefined;
  private link: MqttClient | undefined;
  private connected = false;
  private info: ConnectionInfo = { state: "closed" };
  private readonly infoListeners = new Set<(info: ConnectionInfo) => void>();
  private readonly states = new Map<string, DeviceState>();
  private readonly statuses = new Map<string, ConnectionStatus>();
  private readonly watches = new Set<Watch>();
  private readonly pending = new Map<string, Pending>();
  private readonly stop = new AbortController();
  private wakeLoop = new AbortController();
  private attempts = 0;
  private lastError: string | undefined;
  private closing = false;

  private constructor(
    authzUrl: string,
    tokenProvider: TokenProvider,
    private readonly options: ClientOptions,
  ) {
    this.api = new SessionApi(authzUrl, tokenProvider, options.fetch);
    this.policy = { ...DEFAULT_RECONNECT, ...options.reconnect };
    this.log = options.logger ?? { debug: () => {}, info: () => {}, warn: () => {} };
    if (options.onConnectionChange) this.infoListeners.add(options.onConnectionChange);
  }

  /** Open a client: session exchange, first connection (within `connectTimeoutMs`, default 30 s). */
  static async open(authzUrl: string, tokenProvider: TokenProvider, options: ClientOptions = {}): Promise<AmoraClient> {
    const client = new AmoraClient(authzUrl, tokenProvider, options);
    await client.exchange();
    client.setInfo({ state: "connecting" });
    void client.connectionLoop();
    void client.refreshLoop();
    const limit = options.connectTimeoutMs ?? 30_000;
    if (limit > 0) {
      const ok = await client.waitConnected(limit);
      if (!ok) {
        const { attempts, lastError } = client;
        await client.close();
        throw new ConnectError(`no broker endpoint accepted a connection within ${limit} ms`, attempts, lastError);
      }
    }
    return client;
  }

  /** The current session (device list, expiry). */
  get session(): Session {
    if (this.sessionValue === undefined || this.closing) throw new ClientClosedError("the client is closed");
    return this.sessionValue;
  }

  get connection(): ConnectionInfo {
    return this.info;
  }

  /** The latest verified state of each device. */
  get latestStates(): ReadonlyMap<string, DeviceState> {
    return this.states;
  }

  get latestStatuses(): ReadonlyMap<string, ConnectionStatus> {
    return this.statuses;
  }

  /** Call `listener` on every connection state change; returns the unsubscribe function. */
  onConnectionChange(listener: (info: ConnectionInfo) => void): () => void {
    this.infoListeners.add(listener);
    return () => this.infoListeners.delete(listener);
  }

  /** Verified states (and connection statuses) of `deviceIds` (default: all session devices). */
  watch(deviceIds?: Iterable<string>, options: { includeConnection?: boolean } = {}): Watch {
    if (this.closing) throw new ClientClosedError("the client is closed");
    const ids = deviceIds === undefined ? undefined : new Set(deviceIds);
    for (const id of ids ?? []) if (!this.session.devices.has(id)) throw new UnknownDeviceError(id);
    const w = new Watch(this, ids, options.includeConnection ?? true, this.options.maxWatchedDevices ?? 10_000);
    this.watches.add(w);
    for (const state of this.states.values()) if (w.wants(state.device_id)) w.offer({ kind: "state", state });
    if (w.includeConnection) for (const status of this.statuses.values()) if (w.wants(status.device_id)) w.offer({ kind: "connection", status });
    return w;
  }

  /** @internal */
  removeWatch(w: Watch): void {
    this.watches.delete(w);
  }

  /**
   * Send `action` to a device and wait for its final answer.
   *
   * The command waits in a bounded outbox while disconnected and is never sent after its
   * deadline (then `CommandExpiredError`); without a final answer by the deadline,
   * `CommandTimeoutError`; `rejected`/`failed` answers throw `CommandRejectedError`.
   */
  command(deviceId: string, action: Action, options: CommandOptions = {}): Promise<CommandResponse> {
    if (this.closing) return Promise.reject(new ClientClosedError("the client is closed"));
    const device = this.session.devices.get(deviceId);
    if (device === undefined) return Promise.reject(new UnknownDeviceError(deviceId));
    if (this.pending.size >= (this.options.maxPendingCommands ?? 256)) {
      return Promise.reject(new OutboxFullError(`the outbox holds ${this.pending.size} pending commands`, deviceId, ""));
    }
    const now = Date.now();
    const timeout = options.timeoutMs ?? 10_000;
    const command: Command = { id: uuid7(now), issued_at_ms: now, expires_at_ms: now + timeout, action, ...(options.ifVersion !== undefined ? { if_version: options.ifVersion } : {}) };
    try {
      checkCommand(messageToWire("command", command) as never, "command", MSGPACK);
    } catch (cause) {
      return Promise.reject(new InvalidCommandError(`invalid command: ${(cause as Error).message}`, { cause }));
    }
    return new Promise<CommandResponse>((resolve, reject) => {
      const entry: Pending = {
        command,
        device,
        qos: options.qos ?? (isCritical(action) ? 2 : 1),
        seal: options.seal ?? false,
        deadline: command.expires_at_ms,
        published: false,
        resolve,
        reject,
        timer: setTimeout(() => {
          this.pending.delete(command.id);
          reject(
            entry.published
              ? new CommandTimeoutError(`no final answer from ${deviceId} within ${timeout} ms`, deviceId, command.id, entry.last)
              : new CommandExpiredError(`command to ${deviceId} expired in the outbox (not connected); it was never sent`, deviceId, command.id),
          );
        }, timeout),
      };
      this.pending.set(command.id, entry);
      if (this.connected && this.link !== undefined) void this.publishCommand(this.link, entry);
    });
  }

  /** Stop: disconnect, end watches, fail pending commands, end the session (best effort). */
  async close(options: { logout?: boolean } = {}): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    this.stop.abort();
    this.wakeLoop.abort();
    for (const entry of this.pending.values()) {
      clearTimeout(entry.timer);
      entry.reject(new ClientClosedError("the client was closed before an answer arrived"));
    }
    this.pending.clear();
    for (const w of [...this.watches]) w.close();
    const link = this.link;
    this.link = undefined;
    if (link !== undefined) await new Promise<void>((resolve) => link.end(true, {}, () => resolve()));
    this.setInfo({ state: "closed" });
    if ((options.logout ?? true) && this.sessionValue !== undefined) await this.api.delete(this.sessionValue);
  }

  // ------------------------------------------------------------------ session

  private async exchange(): Promise<void> {
    const session = await this.api.create(this.signingKey, this.encryptionKey, this.options.clientName);
    this.stats.sessionExchanges += 1;
    this.adopt(session);
  }

  private adopt(session: Session): void {
    const old = this.sessionValue;
    this.sessionValue = session;
    if (old === undefined || old.sessionId !== session.sessionId) {
      this.sender = new Sender(session.sessionId, this.signingKey, randomEpoch());
    }
    const credentialsChanged =
      old !== undefined && (old.broker.password !== session.broker.password || old.broker.clientId !== session.broker.clientId || old.broker.endpoints.join() !== session.broker.endpoints.join());
    for (const id of [...this.states.keys()]) if (!session.devices.has(id)) this.states.delete(id);
    for (const id of [...this.statuses.keys()]) if (!session.devices.has(id)) this.statuses.delete(id);
    if (credentialsChanged) this.link?.end(true); // the loop reconnects with the new credential
  }

  private async refreshLoop(): Promise<void> {
    const backoff = new Backoff({ ...DEFAULT_RECONNECT, initialDelayMs: 1000 });
    while (!this.closing) {
      await sleep(refreshDelay(this.session, Date.now(), this.options.refreshMargin ?? 0.2), this.stop.signal);
      if (this.closing) return;
      try {
        try {
          this.adopt(await this.api.refresh(this.session));
          this.stats.sessionRefreshes += 1;
        } catch (error) {
          if (error instanceof AuthzUnavailableError || !(error instanceof SessionError)) throw error;
          this.log.info(`amora-sync-web: session refresh refused (${error.message}); exchanging again`);
          await this.exchange();
        }
        backoff.reset();
      } catch (error) {
        this.log.warn(`amora-sync-web: session refresh failed: ${(error as Error).message}`);
        await sleep(Math.max(500, backoff.nextDelay()), this.stop.signal);
      }
    }
  }

  // ------------------------------------------------------------------ connection

  private setInfo(info: ConnectionInfo): void {
    this.info = info;
    for (const listener of this.infoListeners) listener(info);
  }

  private waitConnected(limitMs: number): Promise<boolean> {
    if (this.connected) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        off();
        resolve(false);
      }, limitMs);
      const off = this.onConnectionChange((info) => {
        if (info.state === "connected" || info.state === "closed") {
          clearTimeout(timer);
          off();
          resolve(info.state === "connected");
        }
      });
    });
  }

  private async connectionLoop(): Promise<void> {
    const backoff = new Backoff(this.policy);
    let start = 0;
    while (!this.closing) {
      const endpoints = this.session.broker.endpoints;
      for (let offset = 0; offset < endpoints.length && !this.closing; offset++) {
        const index = (start + offset) % endpoints.length;
        const endpoint = endpoints[index]!;
        const link = await this.attempt(endpoint);
        if (link !== undefined) {
          start = index; // come back here first next time
          backoff.reset();
          await this.serve(link, endpoint);
          break;
        }
      }
      if (this.closing) return;
      const delay = backoff.nextDelay();
      this.log.debug(`amora-sync-web: next connection attempt in ${delay.toFixed(0)} ms`);
      // A jittered pause (not a wait for an event) is the point of backoff.
      this.wakeLoop = new AbortController();
      await sleep(delay, AbortSignal.any ? AbortSignal.any([this.stop.signal, this.wakeLoop.signal]) : this.stop.signal);
    }
  }

  private attempt(endpoint: string): Promise<MqttClient | undefined> {
    this.attempts += 1;
    const creds = this.session.broker;
    return new Promise((resolve) => {
      const link = mqtt.connect(endpoint, {
        protocolVersion: 5,
        clientId: creds.clientId,
        username: creds.username,
        password: creds.password,
        clean: true, // every connection resubscribes and resyncs from the retained messages
        keepalive: this.options.keepaliveS ?? 30,
        reconnectPeriod: 0, // the loop here owns reconnects: backoff with full jitter and failover
        connectTimeout: this.policy.connectTimeoutMs,
        resubscribe: false,
        ...this.options.mqttOptions,
      });
      let settled = false;
      const fail = (why: string, code?: unknown): void => {
        if (settled) return;
        settled = true;
        this.lastError = `${endpoint}: ${why}`;
        this.log.info(`amora-sync-web: cannot connect to ${this.lastError}`);
        this.setInfo({ state: this.info.state === "connecting" ? "connecting" : "reconnecting", endpoint, error: why });
        link.end(true);
        // CONNACK "bad user name or password" / "not authorized" (MQTT 5: 134, 135; 3.1.1: 4, 5):
        // the session's broker credential is gone, so exchange the token for a new session.
        if (typeof code === "number" && [4, 5, 134, 135].includes(code)) void this.exchange().catch(() => {});
        resolve(undefined);
      };
      link.once("error", (err) => fail(err.message, (err as { code?: unknown }).code));
      link.once("close", () => fail("connection closed"));
      link.once("connect", () => {
        if (settled) return;
        void this.afterConnect(link).then(
          () => {
            settled = true;
            resolve(link);
          },
          (err: Error) => fail(err.message),
        );
      });
    });
  }

  private async afterConnect(link: MqttClient): Promise<void> {
    link.on("message", (topic, payload, packet) => void this.onMessage(topic, payload, packet));
    const topics: Record<string, { qos: 1 }> = {};
    for (const id of this.session.devices.keys()) {
      for (const t of [stateTopic(id), connectionTopic(id), responsesTopic(id)]) topics[t] = { qos: 1 };
    }
    // Subscribing on every connection re-sends the retained state and status: the resync
    // after a reconnect (duplicates and older versions are dropped by version).
    if (Object.keys(topics).length > 0) await link.subscribeAsync(topics);
  }

  private async serve(link: MqttClient, endpoint: string): Promise<void> {
    this.link = link;
    this.connected = true;
    this.stats.connects += 1;
    this.lastError = undefined;
    this.setInfo({ state: "connected", endpoint });
    this.log.info(`amora-sync-web: connected to ${endpoint}`);
    this.flush(link);
    await new Promise<void>((resolve) => {
      const done = (): void => resolve();
      link.once("close", done);
      link.once("error", (err) => {
        this.lastError = err.message;
        link.end(true);
      });
      this.stop.signal.addEventListener("abort", done, { once: true });
    });
    this.connected = false;
    if (this.link === link) this.link = undefined;
    link.removeAllListeners("message");
    link.end(true);
    if (!this.closing) this.setInfo({ state: "reconnecting", endpoint, ...(this.lastError ? { error: this.lastError } : {}) });
  }

  /** Send what waits in the outbox; a command past its deadline is never sent. */
  private flush(link: MqttClient): void {
    const now = Date.now();
    // Clean sessions: anything in flight when the link dropped is sent again (devices drop
    // duplicates by command id and answer with the original outcome).
    for (const entry of this.pending.values()) if (now < entry.deadline) void this.publishCommand(link, entry);
  }

  private async publishCommand(link: MqttClient, entry: Pending): Promise<void> {
    const now = Date.now();
    if (now >= entry.deadline || this.sender === undefined) return;
    const topic = commandsTopic(entry.device.deviceId);
    const codec = this.options.codec ?? MSGPACK;
    const payload = await this.sender.encode(topic, entry.command, {
      nowMs: now,
      expiresAtMs: entry.command.expires_at_ms,
      grant: this.session.grant,
      codec,
      ...(entry.seal && entry.device.encryptionKey ? { sealTo: entry.device.encryptionKey } : {}),
    });
    entry.published = true;
    this.stats.commandsSent += 1;
    link.publish(topic, Buffer.from(payload) as never, {
      qos: entry.qos,
      properties: {
        contentType: codec === JSON_CODEC ? JSON_CODEC : MSGPACK,
        responseTopic: responsesTopic(entry.device.deviceId),
        correlationData: Buffer.from(new TextEncoder().encode(entry.command.id)) as never,
        messageExpiryInterval: Math.max(1, Math.ceil((entry.deadline - now) / 1000)),
      },
    });
  }

  // ------------------------------------------------------------------ inbound

  private async onMessage(topic: string, payload: Uint8Array, packet: IPublishPacket): Promise<void> {
    this.stats.received += 1;
    const session = this.sessionValue;
    if (session === undefined) return;
    let deviceId: string;
    try {
      deviceId = parseTopic(topic).deviceId;
    } catch {
      this.stats.invalid += 1;
      return;
    }
    const device = session.devices.get(deviceId);
    if (device === undefined) {
      this.stats.invalid += 1;
      return;
    }
    let verified;
    try {
      verified = await verifyEnvelope(new Uint8Array(payload), device.signingKey, {
        topic,
        contentType: packet.properties?.contentType ?? null,
        nowMs: Date.now(),
        decryptKey: this.encryptionKey,
      });
    } catch (error) {
      if (!(error instanceof ProtocolError)) throw error;
      this.stats.invalid += 1;
      this.log.warn(`amora-sync-web: dropped unverifiable message on ${topic}: ${error.name}: ${error.message}`);
      return;
    }
    if (verified.type === "state") this.onState(verified.message as DeviceState);
    else if (verified.type === "connection") this.onStatus(verified.message as ConnectionStatus);
    else if (verified.type === "response") this.onResponse(verified.message as CommandResponse);
  }

  private onState(state: DeviceState): void {
    const held = this.states.get(state.device_id);
    if (held !== undefined && state.version <= held.version) {
      this.stats.stale += 1;
      return;
    }
    this.states.set(state.device_id, state);
    this.stats.delivered += 1;
    for (const w of this.watches) if (w.wants(state.device_id)) w.offer({ kind: "state", state });
  }

  private onStatus(status: ConnectionStatus): void {
    const held = this.statuses.get(status.device_id);
    // A late Last Will carries a lower version than the online status that followed it.
    if (held !== undefined && ((held.version !== undefined && status.version !== undefined && status.version < held.version) || JSON.stringify(held) === JSON.stringify(status))) {
      this.stats.stale += 1;
      return;
    }
    this.statuses.set(status.device_id, status);
    this.stats.delivered += 1;
    for (const w of this.watches) if (w.includeConnection && w.wants(status.device_id)) w.offer({ kind: "connection", status });
  }

  private onResponse(response: CommandResponse): void {
    const entry = this.pending.get(response.command_id);
    if (entry === undefined || entry.device.deviceId !== response.device_id) return; // another app's command
    if (FINAL_OK.has(response.status) || FINAL_BAD.has(response.status)) {
      clearTimeout(entry.timer);
      this.pending.delete(response.command_id);
      if (FINAL_OK.has(response.status)) entry.resolve(response);
      else entry.reject(new CommandRejectedError(response, response.device_id, response.command_id));
    } else {
      entry.last = response;
    }
  }
}

export { AmoraSyncError };
