/**
 * The two encodings of the wire format: MessagePack (default) and JSON.
 *
 * Both map to one in-memory form, `Wire`: plain objects (keys in insertion order),
 * arrays, strings, booleans, `Uint8Array` for `bin`, and integers as `number` when they
 * are safe (|n| <= 2^53 - 1) or `bigint` otherwise (epochs and sequence numbers are 63-bit).
 * JSON's `bin` values are standard base64 with padding (RFC 4648 section 4).
 */
import { Decoder, Encoder } from "@msgpack/msgpack";

import { SchemaError } from "./errors.js";

export const MSGPACK = "application/vnd.amora.v1+msgpack";
export const JSON_CODEC = "application/vnd.amora.v1+json";
export type Codec = typeof MSGPACK | typeof JSON_CODEC;

/** A float seen in JSON input; never valid where the schema wants an integer. */
export class JsonFloat {
  constructor(readonly value: number) {}
}

export type Wire = null | boolean | number | bigint | string | Uint8Array | JsonFloat | Wire[] | { [key: string]: Wire };

/** Pick the codec for an MQTT content type; none means MessagePack. */
export function codecFor(contentType: string | null | undefined): Codec {
  if (contentType === undefined || contentType === null || contentType === MSGPACK) return MSGPACK;
  if (contentType === JSON_CODEC) return JSON_CODEC;
  throw new SchemaError(`unsupported content type ${JSON.stringify(contentType)} (use ${MSGPACK} or ${JSON_CODEC})`);
}

// ------------------------------------------------------------------ base64 (standard, padded, strict)

const B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const B64_RE = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

export function toBase64(bytes: Uint8Array): string {
  let out = "";
  for (let i = 0; i < bytes.length; i += 3) {
    const a = bytes[i]!, b = bytes[i + 1], c = bytes[i + 2];
    out += B64[a >> 2]! + B64[((a & 3) << 4) | ((b ?? 0) >> 4)]!;
    out += b === undefined ? "=" : B64[((b & 15) << 2) | ((c ?? 0) >> 6)]!;
    out += c === undefined ? "=" : B64[c & 63]!;
  }
  return out;
}

/** Decode standard padded base64; anything else (url-safe alphabet, no padding, spaces) is a SchemaError. */
export function fromBase64(text: string, what = "base64 value"): Uint8Array {
  if (!B64_RE.test(text)) throw new SchemaError(`${what} is not standard padded base64`);
  const pad = text.endsWith("==") ? 2 : text.endsWith("=") ? 1 : 0;
  const out = new Uint8Array((text.length / 4) * 3 - pad);
  let o = 0;
  for (let i = 0; i < text.length; i += 4) {
    const n = [0, 1, 2, 3].map((k) => (text[i + k] === "=" ? 0 : B64.indexOf(text[i + k]!)));
    const v = (n[0]! << 18) | (n[1]! << 12) | (n[2]! << 6) | n[3]!;
    for (const byte of [v >> 16, (v >> 8) & 255, v & 255]) if (o < out.length) out[o++] = byte;
  }
  return out;
}

/** Lenient decoding for HTTP answers (standard or url-safe, padding optional). */
export function fromAnyBase64(text: string, what = "base64 value"): Uint8Array {
  const std = text.replace(/-/g, "+").replace(/_/g, "/");
  return fromBase64(std + "=".repeat((4 - (std.length % 4)) % 4), what);
}

export function hex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export function fromHex(text: string): Uint8Array {
  const out = new Uint8Array(text.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(text.slice(2 * i, 2 * i + 2), 16);
  return out;
}

export function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

export function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

// ------------------------------------------------------------------ MessagePack

const mpEncoder = new Encoder({ useBigInt64: true, ignoreUndefined: true });
const mpDecoder = new Decoder({ useBigInt64: true });

function normalize(value: unknown): Wire {
  if (typeof value === "bigint") {
    return value >= BigInt(Number.MIN_SAFE_INTEGER) && value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(value) : value;
  }
  if (typeof value === "number" && !Number.isInteger(value)) return new JsonFloat(value);
  if (Array.isArray(value)) return value.map(normalize);
  if (value instanceof Uint8Array || value === null) return value;
  if (typeof value === "object" && value !== undefined) {
    const out: { [key: string]: Wire } = {};
    for (const [k, v] of Object.entries(value)) out[k] = normalize(v);
    return out;
  }
  return value as Wire;
}

// msgpack's smallest-form rule (what msgspec writes): integers that fit 32 bits as numbers,
// wider ones as 64-bit; @msgpack/msgpack would write wide numbers as float64 and small
// bigints as 64-bit, so each integer goes in as the type that gets it its smallest form.
function forEncoding(value: unknown): unknown {
  if (typeof value === "bigint") return value >= -(2n ** 31n) && value < 2n ** 32n ? Number(value) : value;
  if (typeof value === "number" && Number.isInteger(value) && (value >= 2 ** 32 || value < -(2 ** 31))) return BigInt(value);
  if (Array.isArray(value)) return value.map(forEncoding);
  if (value instanceof Uint8Array || value === null || typeof value !== "object") return value;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value)) if (v !== undefined) out[k] = forEncoding(v);
  return out;
}

export function encodeMsgpack(value: unknown): Uint8Array {
  return mpEncoder.encode(forEncoding(value));
}

export function decodeMsgpack(bytes: Uint8Array, what: string): Wire {
  try {
    return normalize(mpDecoder.decode(bytes));
  } catch (cause) {
    throw new SchemaError(`malformed ${what}: ${(cause as Error).message}`, { cause });
  }
}

// ------------------------------------------------------------------ JSON (integers beyond 2^53 kept exact)

const utf8 = new TextEncoder();
const strictUtf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

function jsonText(value: unknown): string {
  if (value === null) return "null";
  if (typeof value === "boolean") return value ? "true" : "false";
  if (typeof value === "number") {
    if (!Number.isFinite(value)) throw new TypeError("not a finite number");
    return String(value);
  }
  if (typeof value === "bigint") return value.toString();
  if (typeof value === "string") return JSON.stringify(value);
  if (value instanceof Uint8Array) return JSON.stringify(toBase64(value));
  if (Array.isArray(value)) return `[${value.map(jsonText).join(",")}]`;
  const parts: string[] = [];
  for (const [k, v] of Object.entries(value as object)) {
    if (v !== undefined) parts.push(`${JSON.stringify(k)}:${jsonText(v)}`);
  }
  return `{${parts.join(",")}}`;
}

/** Encode as compact JSON (UTF-8), `bin` as standard padded base64, bigints as exact integers. */
export function encodeJson(value: unknown): Uint8Array {
  return utf8.encode(jsonText(value));
}

class JsonParser {
  private i = 0;
  constructor(private readonly s: string) {}

  parse(): Wire {
    const v = this.value();
    this.ws();
    if (this.i !== this.s.length) this.fail("trailing characters");
    return v;
  }

  private fail(why: string): never {
    throw new SyntaxError(`${why} at character ${this.i}`);
  }

  private ws(): void {
    while (this.i < this.s.length && " \t\n\r".includes(this.s[this.i]!)) this.i++;
  }

  private value(): Wire {
    this.ws();
    const c = this.s[this.i];
    if (c === "{") return this.object();
    if (c === "[") return this.array();
    if (c === '"') return this.string();
    if (c === "t" || c === "f" || c === "n") {
      for (const [word, v] of [["true", true], ["false", false], ["null", null]] as const) {
        if (this.s.startsWith(word, this.i)) {
          this.i += word.length;
          return v;
        }
      }
    }
    const m = /^-?(?:0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/.exec(this.s.slice(this.i, this.i + 400));
    if (!m) this.fail("unexpected character");
    this.i += m[0].length;
    if (m[1] !== undefined || m[2] !== undefined) return new JsonFloat(Number(m[0]));
    const n = BigInt(m[0]);
    return n >= BigInt(Number.MIN_SAFE_INTEGER) && n <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(n) : n;
  }

  private string(): string {
    const m = /^"(?:[^"\\\u0000-\u001f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"/.exec(this.s.slice(this.i));
    if (!m) this.fail("bad string");
    this.i += m[0].length;
    return JSON.parse(m[0]) as string;
  }

  private array(): Wire[] {
    this.i++;
    const out: Wire[] = [];
    this.ws();
    if (this.s[this.i] === "]") {
      this.i++;
      return out;
    }
    for (;;) {
      out.push(this.value());
      this.ws();
      const c = this.s[this.i++];
      if (c === "]") return out;
      if (c !== ",") this.fail("expected , or ]");
    }
  }

  private object(): { [key: string]: Wire } {
    this.i++;
    const out: { [key: string]: Wire } = {};
    this.ws();
    if (this.s[this.i] === "}") {
      this.i++;
      return out;
    }
    for (;;) {
      this.ws();
      if (this.s[this.i] !== '"') this.fail("expected a key");
      const key = this.string();
      this.ws();
      if (this.s[this.i++] !== ":") this.fail("expected :");
      const v = this.value();
      if (key !== "__proto__") out[key] = v;
      this.ws();
      const c = this.s[this.i++];
      if (c === "}") return out;
      if (c !== ",") this.fail("expected , or }");
    }
  }
}

export function decodeJson(bytes: Uint8Array, what: string): Wire {
  try {
    return new JsonParser(strictUtf8.decode(bytes)).parse();
  } catch (cause) {
    throw new SchemaError(`malformed ${what}: ${(cause as Error).message}`, { cause });
  }
}

export function encodeWith(codec: Codec, value: unknown): Uint8Array {
  return codec === MSGPACK ? encodeMsgpack(value) : encodeJson(value);
}

export function decodeWith(codec: Codec, bytes: Uint8Array, what: string): Wire {
  return codec === MSGPACK ? decodeMsgpack(bytes, what) : decodeJson(bytes, what);
}
