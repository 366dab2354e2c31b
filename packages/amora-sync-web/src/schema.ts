/**
 * A small declarative schema: checks a decoded `Wire` value and fills defaults, and turns a
 * value back into the ordered map the wire carries (fields in declaration order, values
 * equal to their default left out). Unknown keys are ignored, as the specification says.
 */
import { fromBase64, JsonFloat, type Codec, JSON_CODEC, type Wire } from "./codec.js";
import { SchemaError } from "./errors.js";

export type Check<T> = (value: Wire, path: string, codec: Codec) => T;

function fail(path: string, why: string): never {
  throw new SchemaError(`${path}: ${why}`);
}

function typeName(value: Wire): string {
  if (value === null) return "null";
  if (value instanceof Uint8Array) return "bytes";
  if (value instanceof JsonFloat) return "float";
  if (Array.isArray(value)) return "array";
  return typeof value;
}

export function int(opts: { min?: number; max?: number } = {}): Check<number> {
  return (v, path) => {
    if (typeof v === "bigint") fail(path, "integers beyond 2^53-1 are not supported here");
    if (typeof v !== "number" || !Number.isInteger(v)) fail(path, `expected an integer, got ${typeName(v)}`);
    if (opts.min !== undefined && v < opts.min) fail(path, `expected >= ${opts.min}, got ${v}`);
    if (opts.max !== undefined && v > opts.max) fail(path, `expected <= ${opts.max}, got ${v}`);
    return v;
  };
}

/** A 63-bit unsigned integer (epochs, sequence numbers) as bigint. */
export const u63: Check<bigint> = (v, path) => {
  if (typeof v !== "number" && typeof v !== "bigint") fail(path, `expected an integer, got ${typeName(v)}`);
  if (typeof v === "number" && !Number.isInteger(v)) fail(path, "expected an integer");
  const n = BigInt(v);
  if (n < 0n || n > 2n ** 63n - 1n) fail(path, "expected an integer in [0, 2^63)");
  return n;
};

export function str(opts: { min?: number; max?: number; pattern?: RegExp } = {}): Check<string> {
  return (v, path) => {
    if (typeof v !== "string") fail(path, `expected a string, got ${typeName(v)}`);
    const length = [...v].length; // code points, as the specification counts
    if (opts.min !== undefined && length < opts.min) fail(path, `expected at least ${opts.min} characters`);
    if (opts.max !== undefined && length > opts.max) fail(path, `expected at most ${opts.max} characters`);
    if (opts.pattern !== undefined && !opts.pattern.test(v)) fail(path, `${JSON.stringify(v)} does not match ${opts.pattern.source}`);
    return v;
  };
}

export const bool: Check<boolean> = (v, path) => {
  if (typeof v !== "boolean") fail(path, `expected a boolean, got ${typeName(v)}`);
  return v;
};

export function oneOf<T extends string>(values: readonly T[]): Check<T> {
  return (v, path) => {
    if (typeof v !== "string" || !(values as readonly string[]).includes(v)) {
      fail(path, `expected one of ${values.join(", ")}, got ${JSON.stringify(v)}`);
    }
    return v as T;
  };
}

/** `bin` in MessagePack, a standard padded base64 string in JSON. */
export function bytes(opts: { length?: number } = {}): Check<Uint8Array> {
  return (v, path, codec) => {
    let b: Uint8Array;
    if (codec === JSON_CODEC && typeof v === "string") b = fromBase64(v, path);
    else if (v instanceof Uint8Array) b = v;
    else fail(path, `expected bytes, got ${typeName(v)}`);
    if (opts.length !== undefined && b.length !== opts.length) fail(path, `expected ${opts.length} bytes, got ${b.length}`);
    return b;
  };
}

export function array<T>(item: Check<T>): Check<T[]> {
  return (v, path, codec) => {
    if (!Array.isArray(v)) fail(path, `expected an array, got ${typeName(v)}`);
    return v.map((x, i) => item(x, `${path}[${i}]`, codec));
  };
}

export interface Field {
  readonly name: string;
  readonly check: Check<unknown>;
  /** Absent: required. `undefined`: optional without a value. Anything else: the default. */
  readonly default?: unknown;
  readonly optional?: boolean;
}

export function req(name: string, check: Check<unknown>): Field {
  return { name, check };
}

export function opt(name: string, check: Check<unknown>, dflt?: unknown): Field {
  return { name, check, default: dflt, optional: true };
}

function isMap(v: Wire): v is { [key: string]: Wire } {
  return typeof v === "object" && v !== null && !Array.isArray(v) && !(v instanceof Uint8Array) && !(v instanceof JsonFloat);
}

export function struct<T>(name: string, fields: readonly Field[], tag?: { field: string; value: string }): Check<T> {
  return (v, path, codec) => {
    if (!isMap(v)) fail(path, `expected a ${name} map, got ${typeName(v)}`);
    const out: Record<string, unknown> = {};
    if (tag !== undefined) out[tag.field] = tag.value;
    for (const f of fields) {
      const raw = Object.hasOwn(v, f.name) ? v[f.name] : undefined;
      if (raw === undefined) {
        if (!f.optional) fail(path, `missing required field ${JSON.stringify(f.name)}`);
        if (f.default !== undefined) out[f.name] = structuredClone(f.default);
        continue;
      }
      // A null for an optional field without a default is "absent", as msgspec decodes it.
      if (raw === null && f.optional && f.default === undefined) continue;
      out[f.name] = f.check(raw, `${path}.${f.name}`, codec);
    }
    return out as T;
  };
}

export function tagged<T>(name: string, tagField: string, variants: Record<string, Check<unknown>>): Check<T> {
  return (v, path, codec) => {
    if (!isMap(v)) fail(path, `expected a ${name} map, got ${typeName(v)}`);
    const t = v[tagField];
    const variant = typeof t === "string" && Object.hasOwn(variants, t) ? variants[t] : undefined;
    if (variant === undefined) fail(path, `unknown ${name} ${JSON.stringify(t)} (expected one of ${Object.keys(variants).join(", ")})`);
    return variant(v, path, codec) as T;
  };
}

function deepEqual(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) return false;
  if (a instanceof Uint8Array || b instanceof Uint8Array) {
    return a instanceof Uint8Array && b instanceof Uint8Array && a.length === b.length && a.every((x, i) => x === b[i]);
  }
  const ka = Object.keys(a), kb = Object.keys(b);
  return ka.length === kb.length && ka.every((k) => deepEqual((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k]));
}

/** The ordered map the wire carries for `value`: declaration order, defaults and absent values left out. */
export function toWire(fields: readonly Field[], value: Record<string, unknown>, tag?: { field: string; value: string }): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  if (tag !== undefined) out[tag.field] = tag.value;
  for (const f of fields) {
    const v = value[f.name];
    if (v === undefined || v === null) continue;
    if (f.optional && f.default !== undefined && deepEqual(v, f.default)) continue;
    out[f.name] = v;
  }
  return out;
}
