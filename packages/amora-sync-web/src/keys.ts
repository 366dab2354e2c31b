/**
 * Keys: Ed25519 signing keys and X25519 encryption keys (32 raw bytes each) with their
 * key ids, `base64url_nopad(SHA-256("amora-kid-v1\0" || raw public key)[0:16])`.
 * Curve arithmetic is @noble/curves'; sealing is @hpke's (RFC 9180).
 */
import { Chacha20Poly1305 } from "@hpke/chacha20poly1305";
import { CipherSuite, HkdfSha256 } from "@hpke/core";
import { DhkemX25519HkdfSha256 } from "@hpke/dhkem-x25519";
import { ed25519, x25519 } from "@noble/curves/ed25519.js";
import { sha256 } from "@noble/hashes/sha2.js";

import { concat, toBase64 } from "./codec.js";
import { DecryptionError, SchemaError } from "./errors.js";

const KID_PREFIX = new TextEncoder().encode("amora-kid-v1\0");

/** The stable id of a raw 32-byte public key (22 characters). */
export function keyId(rawPublicKey: Uint8Array): string {
  const digest = sha256(concat(KID_PREFIX, rawPublicKey)).slice(0, 16);
  return toBase64(digest).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function raw32(raw: Uint8Array, what: string): Uint8Array {
  if (!(raw instanceof Uint8Array) || raw.length !== 32) throw new SchemaError(`${what} must be 32 raw bytes`);
  return Uint8Array.from(raw);
}

/** An Ed25519 public key. */
export class VerifyKey {
  readonly kid: string;
  private constructor(readonly raw: Uint8Array) {
    this.kid = keyId(raw);
  }
  static fromRaw(raw: Uint8Array): VerifyKey {
    return new VerifyKey(raw32(raw, "an Ed25519 public key"));
  }
  /** RFC 8032 verification (not the more lenient ZIP-215 rules), as OpenSSL does it. */
  verify(signature: Uint8Array, message: Uint8Array): boolean {
    if (signature.length !== 64) return false;
    try {
      return ed25519.verify(signature, message, this.raw, { zip215: false });
    } catch {
      return false;
    }
  }
}

/** An Ed25519 private key (its 32-byte seed). */
export class SigningKey {
  readonly publicKey: VerifyKey;
  private constructor(private readonly seed: Uint8Array) {
    this.publicKey = VerifyKey.fromRaw(ed25519.getPublicKey(seed));
  }
  static fromRaw(seed: Uint8Array): SigningKey {
    return new SigningKey(raw32(seed, "an Ed25519 private key"));
  }
  static generate(): SigningKey {
    return new SigningKey(ed25519.utils.randomSecretKey());
  }
  get kid(): string {
    return this.publicKey.kid;
  }
  toRaw(): Uint8Array {
    return Uint8Array.from(this.seed);
  }
  sign(message: Uint8Array): Uint8Array {
    return ed25519.sign(message, this.seed);
  }
}

/** An X25519 public key that bodies can be sealed to. */
export class EncryptionPublicKey {
  readonly kid: string;
  private constructor(readonly raw: Uint8Array) {
    this.kid = keyId(raw);
  }
  static fromRaw(raw: Uint8Array): EncryptionPublicKey {
    return new EncryptionPublicKey(raw32(raw, "an X25519 public key"));
  }
}

/** An X25519 private key that opens sealed bodies. */
export class EncryptionKey {
  readonly publicKey: EncryptionPublicKey;
  private constructor(private readonly secret: Uint8Array) {
    this.publicKey = EncryptionPublicKey.fromRaw(x25519.getPublicKey(secret));
  }
  static fromRaw(raw: Uint8Array): EncryptionKey {
    return new EncryptionKey(raw32(raw, "an X25519 private key"));
  }
  static generate(): EncryptionKey {
    return new EncryptionKey(x25519.utils.randomSecretKey());
  }
  get kid(): string {
    return this.publicKey.kid;
  }
  toRaw(): Uint8Array {
    return Uint8Array.from(this.secret);
  }
}

// DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / ChaCha20-Poly1305, base mode, empty AAD.
const suite = new CipherSuite({
  kem: new DhkemX25519HkdfSha256(),
  kdf: new HkdfSha256(),
  aead: new Chacha20Poly1305(),
});
const ENC_SIZE = 32;

/** HPKE single-shot seal; returns `enc || ciphertext-with-tag`. */
export async function seal(to: EncryptionPublicKey, info: Uint8Array, plaintext: Uint8Array): Promise<Uint8Array> {
  const recipientPublicKey = await suite.kem.deserializePublicKey(to.raw);
  const { ct, enc } = await suite.seal({ recipientPublicKey, info }, plaintext);
  return concat(new Uint8Array(enc), new Uint8Array(ct));
}

/** HPKE single-shot open of `enc || ciphertext-with-tag`. */
export async function open(key: EncryptionKey, info: Uint8Array, sealed: Uint8Array): Promise<Uint8Array> {
  if (sealed.length < ENC_SIZE + 16) throw new DecryptionError("the sealed body is too short to hold enc and a tag");
  try {
    const recipientKey = await suite.kem.deserializePrivateKey(key.toRaw());
    const pt = await suite.open({ recipientKey, enc: sealed.slice(0, ENC_SIZE), info }, sealed.slice(ENC_SIZE));
    return new Uint8Array(pt);
  } catch (cause) {
    throw new DecryptionError("the sealed body does not open with this key", { cause });
  }
}
