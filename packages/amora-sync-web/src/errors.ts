/**
 * The one error hierarchy of the package: every public call throws an {@link AmoraSyncError}.
 *
 * Protocol failures keep the class names of the protocol specification (`SchemaError`,
 * `BadSignature`, ...) so that the test vectors' `expect` field names them directly; the
 * client's failures follow the Python SDK (`SessionError`, `CommandTimeoutError`, ...).
 * MQTT.js, fetch, msgpack and crypto exceptions are translated where they are caught and
 * kept as `cause`.
 */

/** Root of every error thrown by `@amora/sync-web`. */
export class AmoraSyncError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

// ---------------------------------------------------------------- protocol (the specification's names)

/** A message broke the wire contract; `name` is the specification's error class. */
export class ProtocolError extends AmoraSyncError {}
/** Malformed bytes, an unknown content type, a missing key, a wrong type or an out-of-range value. */
export class SchemaError extends ProtocolError {}
/** A device id that is not 1-64 characters of `[A-Za-z0-9_-]` starting with a letter or digit. */
export class InvalidDeviceId extends SchemaError {
  constructor(readonly deviceId: unknown) {
    super(`invalid device id ${JSON.stringify(deviceId)}: 1-64 characters of [A-Za-z0-9_-], starting with a letter or digit`);
  }
}
/** A topic that is not `amora/devices/{device_id}/{state|commands|responses|connection}`. */
export class TopicError extends SchemaError {}
/** The payload is longer than the size limit (checked before any parsing). */
export class TooLarge extends ProtocolError {
  constructor(readonly size: number, readonly limit: number) {
    super(`payload of ${size} bytes exceeds the limit of ${limit} bytes`);
  }
}
/** The Ed25519 signature does not verify. */
export class BadSignature extends ProtocolError {}
/** No trusted key has the key id the message names. */
export class UnknownKey extends ProtocolError {
  constructor(readonly kid: string, what = "signing key") {
    super(`unknown ${what} ${JSON.stringify(kid)}`);
  }
}
/** The message does not belong on the topic it arrived on. */
export class TopicMismatch extends ProtocolError {}
/** The message (or its grant) expired. */
export class Expired extends ProtocolError {
  constructor(readonly what: string, readonly expiredAtMs: number, readonly nowMs: number) {
    super(`${what} expired at ${expiredAtMs} (now ${nowMs})`);
  }
}
/** A time lies too far in the future. */
export class ClockSkew extends ProtocolError {}
/** A command id or sequence number was seen before. */
export class Replayed extends ProtocolError {}
/** A command without a grant, or with a grant that does not cover sender, device or right. */
export class Unauthorized extends ProtocolError {}
/** A sealed body that does not open (or no key to open it). */
export class DecryptionError extends ProtocolError {}

// ---------------------------------------------------------------- client (the Python SDK's names)

/** The client is not open (never opened, or already closed). */
export class ClientClosedError extends AmoraSyncError {}
/** A command does not satisfy the schema (e.g. a volume of 400); nothing was sent. */
export class InvalidCommandError extends AmoraSyncError {}
/** The device is not one of the session's devices. */
export class UnknownDeviceError extends AmoraSyncError {
  constructor(readonly deviceId: string) {
    super(`device ${JSON.stringify(deviceId)} is not in this session`);
  }
}
/** The authz service did not give (or refresh) a session. */
export class SessionError extends AmoraSyncError {
  readonly statusCode: number | undefined;
  readonly code: string | undefined;
  constructor(message: string, options: { statusCode?: number; code?: string; cause?: unknown } = {}) {
    super(message, { cause: options.cause });
    this.statusCode = options.statusCode;
    this.code = options.code;
  }
}
/** The user's token was refused (HTTP 401/403): a new token is needed. */
export class AuthenticationError extends SessionError {}
/** The authz service could not be reached or failed (network error, 5xx, 429). */
export class AuthzUnavailableError extends SessionError {}
/** No broker endpoint accepted a connection before the deadline. */
export class ConnectError extends AmoraSyncError {
  constructor(message: string, readonly attempts: number, readonly lastError: string | undefined) {
    super(message);
  }
}
/** A command did not succeed. */
export class CommandError extends AmoraSyncError {
  constructor(message: string, readonly deviceId: string, readonly commandId: string) {
    super(message);
  }
}
/** The outbox holds its maximum of pending commands; nothing was queued (push back). */
export class OutboxFullError extends CommandError {}
/** The deadline passed while the command waited in the outbox: it was never sent. */
export class CommandExpiredError extends CommandError {}
/** The command was sent but no final response arrived before its deadline. */
export class CommandTimeoutError extends CommandError {
  constructor(message: string, deviceId: string, commandId: string, readonly lastResponse?: unknown) {
    super(message, deviceId, commandId);
  }
}
/** The device answered `rejected` or `failed`. */
export class CommandRejectedError extends CommandError {
  constructor(
    readonly response: { status: string; reason?: string | undefined },
    deviceId: string,
    commandId: string,
  ) {
    const detail = response.reason ? ` (${response.reason})` : "";
    super(`device ${JSON.stringify(deviceId)} answered ${response.status}${detail} to command ${commandId}`, deviceId, commandId);
  }
  get status(): string {
    return this.response.status;
  }
  get reason(): string | undefined {
    return this.response.reason;
  }
}
