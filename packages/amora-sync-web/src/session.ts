/** Sessions from the authz service: the token exchange and its refresh (fetch). */
import { fromAnyBase64, toBase64 } from "./codec.js";
import { AuthenticationError, AuthzUnavailableError, SessionError } from "./errors.js";
import { EncryptionKey, EncryptionPublicKey, SigningKey, VerifyKey } from "./keys.js";

/** Returns the user's current access token (e.g. from MSAL); may be async. */
export type TokenProvider = () => string | Promise<string>;

export interface DeviceInfo {
  deviceId: string;
  signingKey: VerifyKey;
  encryptionKey: EncryptionPublicKey | undefined;
}

export interface BrokerCredentials {
  /** `wss://` endpoints in order of preference (others are left out: browsers speak websockets). */
  endpoints: string[];
  username: string;
  password: string;
  clientId: string;
}

export interface Session {
  sessionId: string;
  expiresAtMs: number;
  broker: BrokerCredentials;
  grant: Uint8Array;
  devices: Map<string, DeviceInfo>;
  authzKeys: VerifyKey[];
}

interface WireSession {
  session_id?: unknown;
  expires_at?: unknown;
  grant?: unknown;
  broker?: { endpoints?: unknown; username?: unknown; password?: unknown; client_id?: unknown };
  devices?: { device_id?: unknown; signing_key?: unknown; encryption_key?: unknown }[];
  authz_keys?: { public_key?: unknown }[];
}

const MS_THRESHOLD = 100_000_000_000; // an epoch above this is milliseconds, not seconds

function expiry(value: unknown): number {
  if (typeof value === "number") return value > MS_THRESHOLD ? value : value * 1000;
  if (typeof value === "string" && !Number.isNaN(Date.parse(value))) return Date.parse(value);
  throw new SessionError(`bad expires_at ${JSON.stringify(value)}`);
}

function text(value: unknown, what: string): string {
  if (typeof value !== "string" || value === "") throw new SessionError(`the session answer has no ${what}`);
  return value;
}

/** Parse a session answer (`previous` fills what a refresh leaves out). */
export function parseSession(body: unknown, previous?: Session): Session {
  const wire = body as WireSession;
  try {
    const sessionId = text(wire.session_id, "session_id");
    let broker = previous?.broker;
    if (wire.broker !== undefined) {
      const endpoints = (Array.isArray(wire.broker.endpoints) ? wire.broker.endpoints : []).filter(
        (e): e is string => typeof e === "string" && e.startsWith("wss://"),
      );
      if (endpoints.length === 0) throw new SessionError("the session lists no wss:// endpoint (the broker needs a websockets listener with TLS)");
      broker = {
        endpoints,
        username: text(wire.broker.username, "broker username"),
        password: text(wire.broker.password, "broker password"),
        clientId: typeof wire.broker.client_id === "string" ? wire.broker.client_id : sessionId,
      };
    }
    if (broker === undefined) throw new SessionError("the session has no broker credentials");
    const devices =
      wire.devices === undefined
        ? (previous?.devices ?? new Map<string, DeviceInfo>())
        : new Map(
            wire.devices.map((d) => {
              const deviceId = text(d.device_id, "device_id");
              return [
                deviceId,
                {
                  deviceId,
                  signingKey: VerifyKey.fromRaw(fromAnyBase64(text(d.signing_key, "device signing_key"))),
                  encryptionKey: typeof d.encryption_key === "string" ? EncryptionPublicKey.fromRaw(fromAnyBase64(d.encryption_key)) : undefined,
                },
              ] as const;
            }),
          );
    const authzKeys =
      wire.authz_keys === undefined ? (previous?.authzKeys ?? []) : wire.authz_keys.map((k) => VerifyKey.fromRaw(fromAnyBase64(text(k.public_key, "authz key"))));
    return { sessionId, expiresAtMs: expiry(wire.expires_at), broker, grant: fromAnyBase64(text(wire.grant, "grant")), devices, authzKeys };
  } catch (cause) {
    if (cause instanceof SessionError) throw cause;
    throw new SessionError(`the authz service sent an unexpected session: ${(cause as Error).message}`, { cause });
  }
}

export async function currentToken(provider: TokenProvider): Promise<string> {
  let token: unknown;
  try {
    token = await provider();
  } catch (cause) {
    throw new AuthenticationError(`the token provider failed: ${(cause as Error).message}`, { cause });
  }
  if (typeof token !== "string" || token === "") throw new AuthenticationError("the token provider returned no token");
  return token;
}

/** The authz service's session endpoints. */
export class SessionApi {
  private readonly base: string;
  constructor(baseUrl: string, private readonly tokenProvider: TokenProvider, private readonly fetcher: typeof fetch = globalThis.fetch.bind(globalThis)) {
    this.base = baseUrl.replace(/\/+$/, "");
  }

  private async post(path: string, body: unknown): Promise<unknown> {
    const token = await currentToken(this.tokenProvider);
    let response: Response;
    try {
      response = await this.fetcher(`${this.base}${path}`, {
        method: "POST",
        headers: { Authorization: `Bearer ${token}`, Accept: "application/json", "Content-Type": "application/json" },
        body: JSON.stringify(body),
      });
    } catch (cause) {
      throw new AuthzUnavailableError(`authz service unreachable: ${(cause as Error).message}`, { cause });
    }
    const raw = await response.text();
    let parsed: unknown;
    try {
      parsed = raw === "" ? {} : JSON.parse(raw);
    } catch {
      parsed = undefined;
    }
    if (response.ok) {
      if (parsed === undefined) throw new SessionError(`authz service answered ${path} with something that is not JSON`);
      return parsed;
    }
    const err = (parsed ?? {}) as { code?: unknown; message?: unknown; detail?: unknown };
    const message = typeof err.message === "string" ? err.message : typeof err.detail === "string" ? err.detail : raw.slice(0, 200);
    const options = { statusCode: response.status, ...(typeof err.code === "string" ? { code: err.code } : {}) };
    const what = `authz service answered ${response.status} on ${path}: ${message}`;
    if (response.status === 401 || response.status === 403) throw new AuthenticationError(what, options);
    if (response.status >= 500 || response.status === 429) throw new AuthzUnavailableError(what, options);
    throw new SessionError(what, options);
  }

  /** Exchange the user's token for a session (`POST /v1/sessions`). */
  async create(signingKey: SigningKey, encryptionKey: EncryptionKey, clientName?: string): Promise<Session> {
    const body = {
      signing_key: toBase64(signingKey.publicKey.raw),
      encryption_key: toBase64(encryptionKey.publicKey.raw),
      ...(clientName ? { client_name: clientName } : {}),
    };
    return parseSession(await this.post("/v1/sessions", body));
  }

  /** Extend `session` (`POST /v1/sessions/{id}/refresh`); the broker credential stays. */
  async refresh(session: Session): Promise<Session> {
    return parseSession(await this.post(`/v1/sessions/${encodeURIComponent(session.sessionId)}/refresh`, {}), session);
  }

  /** End `session` (best effort). */
  async delete(session: Session): Promise<void> {
    try {
      const token = await currentToken(this.tokenProvider);
      await this.fetcher(`${this.base}/v1/sessions/${encodeURIComponent(session.sessionId)}`, { method: "DELETE", headers: { Authorization: `Bearer ${token}` } });
    } catch {
      // best effort: the session expires anyway
    }
  }
}

/** Ms to wait before refreshing: when `margin` of the remaining life is left, at least 500 ms. */
export function refreshDelay(session: Session, nowMs: number, margin: number): number {
  return Math.max(500, Math.floor(Math.max(0, session.expiresAtMs - nowMs) * (1 - margin)));
}
