/**
 * Signed (and optionally sealed) envelopes and grants, as the protocol README specifies them:
 *
 *     msgpack: [header: bin, body: bin, signature: bin(64)]
 *     json:    {"header": b64, "body": b64, "sig": b64}
 *     signed:  "amora-envelope-v1\0" || u16be(len(topic)) || topic || u32be(len(header)) || header
 *              || u32be(len(body)) || body
 *
 * Verification follows the README's order step by step, so that a message with several
 * faults fails with the same error class here as in every other implementation.
 */
import { codecFor, concat, decodeMsgpack, decodeWith, encodeMsgpack, encodeWith, fromBase64, MSGPACK, type Codec, type Wire } from "./codec.js";
import { BadSignature, DecryptionError, Expired, SchemaError, TooLarge, TopicMismatch, Unauthorized, UnknownKey } from "./errors.js";
import { EncryptionKey, EncryptionPublicKey, open, seal, SigningKey, VerifyKey } from "./keys.js";
import {
  checkGrant,
  checkMessage,
  grantToWire,
  messageToWire,
  type Command,
  type Grant,
  type Message,
  type MessageType,
  type Right,
} from "./messages.js";
import { bytes, int, oneOf, opt, req, str, struct, u63 } from "./schema.js";
import { KIND_TYPE, parseTopic } from "./topics.js";

export const PROTOCOL_VERSION = 1;
export const DEFAULT_MAX_SIZE = 64 * 1024;
export const MAX_GRANT_SIZE = 16 * 1024;
const SIGNATURE_SIZE = 64;
const text = new TextEncoder();
const ENVELOPE_DOMAIN = text.encode("amora-envelope-v1\0");
const SEAL_DOMAIN = text.encode("amora-seal-v1\0");
const GRANT_DOMAIN = text.encode("amora-grant-v1\0");

export interface Header {
  v: number;
  type: MessageType;
  sender: string;
  kid: string;
  epoch: bigint;
  seq: bigint;
  ts_ms: number;
  exp_ms?: number;
  grant?: Uint8Array;
  sealed_to?: string;
}

const HEADER = [
  req("v", int()),
  req("type", oneOf(["state", "command", "response", "connection"] as const)),
  req("sender", str({ min: 1, max: 128 })),
  req("kid", str({ min: 1, max: 64 })),
  req("epoch", u63),
  req("seq", u63),
  req("ts_ms", int({ min: 0 })),
  opt("exp_ms", int({ min: 0 })),
  opt("grant", bytes()),
  opt("sealed_to", str({ min: 1, max: 64 })),
];
const checkHeader = struct<Header>("header", HEADER);

/** Trusted keys by key id. */
export type KeyRing = ReadonlyMap<string, VerifyKey>;

export function keyring(keys: Iterable<VerifyKey>): Map<string, VerifyKey> {
  return new Map([...keys].map((k) => [k.kid, k]));
}

function u16(n: number): Uint8Array {
  return Uint8Array.of(n >> 8, n & 255);
}

function u32(n: number): Uint8Array {
  return Uint8Array.of(n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255);
}

/** The exact bytes an envelope's signature covers. */
export function signedBytes(topic: string, header: Uint8Array, body: Uint8Array): Uint8Array {
  const t = text.encode(topic);
  return concat(ENVELOPE_DOMAIN, u16(t.length), t, u32(header.length), header, u32(body.length), body);
}

/** The HPKE `info` that binds a sealed body to its topic and header. */
export function sealInfo(topic: string, header: Uint8Array): Uint8Array {
  const t = text.encode(topic);
  return concat(SEAL_DOMAIN, u16(t.length), t, u32(header.length), header);
}

export interface EncodeOptions {
  signingKey: SigningKey;
  sender: string;
  epoch: bigint;
  seq: bigint;
  nowMs: number;
  /** Envelope expiry; a command's own `expires_at_ms` when not given. */
  expiresAtMs?: number;
  grant?: Uint8Array;
  codec?: Codec;
  sealTo?: EncryptionPublicKey;
}

/** Encode, optionally seal, and sign `message` for `topic` (its type follows from the topic). */
export async function encodeEnvelope(topic: string, message: Message, options: EncodeOptions): Promise<Uint8Array> {
  const type = KIND_TYPE[parseTopic(topic).kind];
  const codec = options.codec ?? MSGPACK;
  const body0 = messageToWire(type, message);
  checkMessage(type, body0 as Wire, MSGPACK); // structs are not checked on build: refuse what a verifier would
  const exp = options.expiresAtMs ?? (type === "command" ? (message as Command).expires_at_ms : undefined);
  const header = {
    v: PROTOCOL_VERSION,
    type,
    sender: options.sender,
    kid: options.signingKey.kid,
    epoch: options.epoch,
    seq: options.seq,
    ts_ms: options.nowMs,
    exp_ms: exp,
    grant: options.grant,
    sealed_to: options.sealTo?.kid,
  };
  const headerBytes = encodeWith(codec, header);
  let body = encodeWith(codec, body0);
  if (options.sealTo !== undefined) body = await seal(options.sealTo, sealInfo(topic, headerBytes), body);
  const signature = options.signingKey.sign(signedBytes(topic, headerBytes, body));
  return codec === MSGPACK ? encodeMsgpack([headerBytes, body, signature]) : encodeWith(codec, { header: headerBytes, body, sig: signature });
}

/** A parsed envelope whose signature has not been checked yet. */
export interface Envelope {
  header: Header;
  headerBytes: Uint8Array;
  body: Uint8Array;
  signature: Uint8Array;
  codec: Codec;
}

function outerPart(v: Wire | undefined, codec: Codec, what: string): Uint8Array {
  if (codec === MSGPACK) {
    if (!(v instanceof Uint8Array)) throw new SchemaError(`malformed envelope: ${what} is not bin`);
    return v;
  }
  if (typeof v !== "string") throw new SchemaError(`malformed envelope: ${what} is not a base64 string`);
  return fromBase64(v, `envelope ${what}`);
}

/** Split an envelope into header, body and signature without verifying anything. */
export function parseEnvelope(payload: Uint8Array, options: { contentType?: string | null; maxSize?: number } = {}): Envelope {
  const maxSize = options.maxSize ?? DEFAULT_MAX_SIZE;
  if (payload.length > maxSize) throw new TooLarge(payload.length, maxSize);
  const codec = codecFor(options.contentType);
  const outer = decodeWith(codec, payload, "envelope");
  let parts: [Wire | undefined, Wire | undefined, Wire | undefined];
  if (codec === MSGPACK) {
    if (!Array.isArray(outer) || outer.length !== 3) throw new SchemaError("malformed envelope: expected an array of exactly 3 bin values");
    parts = [outer[0], outer[1], outer[2]];
  } else {
    if (typeof outer !== "object" || outer === null || Array.isArray(outer) || outer instanceof Uint8Array) {
      throw new SchemaError("malformed envelope: expected an object with header, body and sig");
    }
    const o = outer as Record<string, Wire>;
    for (const k of ["header", "body", "sig"]) if (!Object.hasOwn(o, k)) throw new SchemaError(`malformed envelope: missing ${JSON.stringify(k)}`);
    parts = [o["header"], o["body"], o["sig"]];
  }
  const headerBytes = outerPart(parts[0], codec, "header");
  const body = outerPart(parts[1], codec, "body");
  const signature = outerPart(parts[2], codec, "sig");
  const header = checkHeader(decodeWith(codec, headerBytes, "header"), "header", codec);
  if (signature.length !== SIGNATURE_SIZE) throw new SchemaError(`signature must be ${SIGNATURE_SIZE} bytes, not ${signature.length}`);
  if (header.v !== PROTOCOL_VERSION) throw new SchemaError(`unsupported protocol version ${header.v}`);
  return { header, headerBytes, body, signature, codec };
}

async function openBody(env: Envelope, topic: string, decryptKey: EncryptionKey | undefined): Promise<Message> {
  let body = env.body;
  const sealedTo = env.header.sealed_to;
  if (sealedTo !== undefined) {
    if (decryptKey === undefined) throw new DecryptionError(`the body is sealed to key ${JSON.stringify(sealedTo)} and no decryption key was given`);
    if (decryptKey.kid !== sealedTo) throw new UnknownKey(sealedTo, "encryption key");
    body = await open(decryptKey, sealInfo(topic, env.headerBytes), body);
  }
  return checkMessage(env.header.type, decodeWith(env.codec, body, `${env.header.type} body`), env.codec);
}

async function checkAndOpen(env: Envelope, topic: string, key: VerifyKey, nowMs: number, decryptKey: EncryptionKey | undefined): Promise<[string, Message]> {
  const { deviceId, kind } = parseTopic(topic);
  if (KIND_TYPE[kind] !== env.header.type) throw new TopicMismatch(`a ${env.header.type} envelope does not belong on ${JSON.stringify(topic)}`);
  if (!key.verify(env.signature, signedBytes(topic, env.headerBytes, env.body))) {
    throw new BadSignature(`envelope signature does not verify for ${JSON.stringify(topic)}`);
  }
  const exp = env.header.exp_ms;
  if (exp !== undefined && nowMs >= exp) throw new Expired("envelope", exp, nowMs);
  return [deviceId, await openBody(env, topic, decryptKey)];
}

export interface Verified {
  header: Header;
  type: MessageType;
  message: Message;
}

export interface VerifyOptions {
  topic: string;
  contentType?: string | null;
  nowMs: number;
  decryptKey?: EncryptionKey;
  maxSize?: number;
}

/**
 * Verify a device's envelope (state, response or connection status) and decode it.
 *
 * `key` is the device's key, or that one device's keys by key id; never a ring of several
 * devices' keys (the key id alone would then let one device vouch for another's topic).
 */
export async function verifyEnvelope(payload: Uint8Array, key: VerifyKey | KeyRing, options: VerifyOptions): Promise<Verified> {
  const env = parseEnvelope(payload, options);
  const verifyKey = key instanceof VerifyKey ? (key.kid === env.header.kid ? key : undefined) : key.get(env.header.kid);
  if (verifyKey === undefined) throw new UnknownKey(env.header.kid);
  if (env.header.type === "command") throw new TopicMismatch("commands are verified with verifyCommand (they carry a grant)");
  const [deviceId, message] = await checkAndOpen(env, options.topic, verifyKey, options.nowMs, options.decryptKey);
  const about = (message as { device_id: string }).device_id;
  if (about !== deviceId || env.header.sender !== deviceId) {
    throw new TopicMismatch(`a message from ${JSON.stringify(env.header.sender)} about ${JSON.stringify(about)} on ${JSON.stringify(options.topic)}`);
  }
  return { header: env.header, type: env.header.type, message };
}

export interface VerifiedCommand {
  header: Header;
  command: Command;
  grant: Grant;
}

/** Verify a command envelope and the grant it carries (devices do this; apps rarely need it). */
export async function verifyCommand(payload: Uint8Array, trustedKeys: KeyRing, options: VerifyOptions): Promise<VerifiedCommand> {
  const env = parseEnvelope(payload, options);
  const { deviceId, kind } = parseTopic(options.topic);
  if (kind !== "commands" || env.header.type !== "command") {
    throw new TopicMismatch(`a ${env.header.type} envelope does not belong on ${JSON.stringify(options.topic)}`);
  }
  if (env.header.grant === undefined) throw new Unauthorized("the command carries no grant");
  const grant = verifyGrant(env.header.grant, trustedKeys, { nowMs: options.nowMs, deviceId, right: "control" });
  if (grant.session_id !== env.header.sender) {
    throw new Unauthorized(`grant is for session ${JSON.stringify(grant.session_id)}, not sender ${JSON.stringify(env.header.sender)}`);
  }
  const sessionKey = VerifyKey.fromRaw(grant.signing_key);
  if (sessionKey.kid !== env.header.kid) throw new UnknownKey(env.header.kid, "session key");
  const [, message] = await checkAndOpen(env, options.topic, sessionKey, options.nowMs, options.decryptKey);
  return { header: env.header, command: message as Command, grant };
}

/** Sign `grant` with the issuer's key: `[body: bin, kid: str, signature: bin(64)]`. */
export function issueGrant(grant: Grant, issuerKey: SigningKey): Uint8Array {
  const body = encodeMsgpack(grantToWire(grant));
  return encodeMsgpack([body, issuerKey.kid, issuerKey.sign(concat(GRANT_DOMAIN, body))]);
}

/** Verify a grant token; each failure has the error class the README's grant table names. */
export function verifyGrant(token: Uint8Array, trustedKeys: KeyRing, options: { nowMs: number; deviceId?: string; right?: Right }): Grant {
  if (token.length > MAX_GRANT_SIZE) throw new SchemaError(`grant of ${token.length} bytes exceeds ${MAX_GRANT_SIZE}`);
  const outer = decodeMsgpack(token, "grant token");
  if (!Array.isArray(outer) || outer.length !== 3 || !(outer[0] instanceof Uint8Array) || typeof outer[1] !== "string" || !(outer[2] instanceof Uint8Array)) {
    throw new SchemaError("malformed grant token: expected [bin, str, bin]");
  }
  const [body, kid, signature] = outer as [Uint8Array, string, Uint8Array];
  const key = trustedKeys.get(kid);
  if (key === undefined) throw new UnknownKey(kid, "grant issuer key");
  if (!key.verify(signature, concat(GRANT_DOMAIN, body))) throw new BadSignature("grant signature does not verify");
  const grant = checkGrant(decodeMsgpack(body, "grant"), "grant", MSGPACK);
  if (options.nowMs >= grant.expires_at_ms) throw new Expired("grant", grant.expires_at_ms, options.nowMs);
  if (options.deviceId !== undefined && !grant.devices.includes(options.deviceId)) {
    throw new Unauthorized(`grant ${grant.grant_id} does not cover device ${JSON.stringify(options.deviceId)}`);
  }
  if (options.right !== undefined && !grant.rights.includes(options.right)) {
    throw new Unauthorized(`grant ${grant.grant_id} does not carry the right ${JSON.stringify(options.right)}`);
  }
  return grant;
}

/** Keeps a sender's epoch and sequence number (the Python `Sender`). */
export class Sender {
  private seq: bigint;
  constructor(readonly senderId: string, readonly signingKey: SigningKey, readonly epoch: bigint, firstSeq = 0n) {
    if (epoch < 0n || epoch > 2n ** 63n - 1n) throw new SchemaError("epoch must be in [0, 2^63)");
    this.seq = firstSeq;
  }
  encode(topic: string, message: Message, options: Omit<EncodeOptions, "signingKey" | "sender" | "epoch" | "seq">): Promise<Uint8Array> {
    const seq = this.seq;
    this.seq += 1n;
    return encodeEnvelope(topic, message, { ...options, signingKey: this.signingKey, sender: this.senderId, epoch: this.epoch, seq });
  }
}

/** A random 63-bit epoch (drawn once per client start). */
export function randomEpoch(): bigint {
  const b = crypto.getRandomValues(new Uint8Array(8));
  b[0]! &= 0x7f;
  return b.reduce((n, x) => (n << 8n) | BigInt(x), 0n);
}
