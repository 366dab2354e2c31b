/**
 * The message schemas of protocol version 1 (the protocol README's "Messages" section):
 * types, checks for decoded bodies and the ordered maps encoders write.
 */
import type { Codec, Wire } from "./codec.js";
import { array, bool, bytes, int, oneOf, opt, req, str, struct, tagged, toWire, type Check, type Field } from "./schema.js";

export const DEVICE_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;
export const IDENTIFIER_PATTERN = /^[A-Za-z0-9._:-]{1,128}$/;

export type PlaybackStatus = "play" | "pause" | "stop";
export type SingleMode = "off" | "on" | "oneshot";
export type CommandStatus = "accepted" | "succeeded" | "failed" | "rejected" | "duplicate";
export type RejectReason = "unauthorized" | "expired" | "version-mismatch" | "invalid" | "unsupported" | "busy" | "clock-skew";
export type Right = "watch" | "control";
export type MessageType = "state" | "command" | "response" | "connection";

export interface Song {
  file: string;
  id?: number;
  position?: number;
  title?: string;
  artist?: string;
  album?: string;
  duration_ms?: number;
}

export interface PlayerOptions {
  repeat: boolean;
  random: boolean;
  single: SingleMode;
  consume: boolean;
}

export interface DeviceState {
  device_id: string;
  version: number;
  status: PlaybackStatus;
  sampled_at_ms: number;
  elapsed_ms?: number;
  song?: Song;
  volume?: number;
  options: PlayerOptions;
  queue_length: number;
  queue_version: number;
  error?: string;
}

export type Action =
  | { type: "play" }
  | { type: "pause" }
  | { type: "toggle" }
  | { type: "stop" }
  | { type: "next" }
  | { type: "previous" }
  | { type: "seek"; position_ms: number }
  | { type: "set_volume"; volume: number }
  | { type: "change_volume"; delta: number }
  | { type: "play_queue_item"; position: number }
  | { type: "ping" };

export interface Command {
  id: string;
  issued_at_ms: number;
  expires_at_ms: number;
  action: Action;
  if_version?: number;
}

export interface CommandResponse {
  command_id: string;
  device_id: string;
  status: CommandStatus;
  at_ms: number;
  reason?: RejectReason;
  message?: string;
  state_version?: number;
  /** True when this repeats the outcome of an id the device had already answered. */
  duplicate: boolean;
  clock_offset_ms?: number;
  retry_after_ms?: number;
}

export interface ConnectionStatus {
  device_id: string;
  online: boolean;
  at_ms: number;
  agent_version?: string;
  reason?: string;
  /** From the state's version counter: a lower one than held is a stale status (a late Will). */
  version?: number;
}

export interface Grant {
  grant_id: string;
  subject: string;
  session_id: string;
  signing_key: Uint8Array;
  devices: string[];
  rights: Right[];
  issued_at_ms: number;
  expires_at_ms: number;
  encryption_key?: Uint8Array;
}

export type Message = DeviceState | Command | CommandResponse | ConnectionStatus;

/** Actions whose repetition changes the outcome: sent with QoS 2. */
export const CRITICAL_ACTIONS: ReadonlySet<Action["type"]> = new Set(["toggle", "next", "previous", "change_volume"]);

export function isCritical(action: Action): boolean {
  return CRITICAL_ACTIONS.has(action.type);
}

const nonNeg = int({ min: 0 });
const shortText = str({ max: 1024 });
const deviceId = str({ pattern: DEVICE_ID_PATTERN });
const identifier = str({ pattern: IDENTIFIER_PATTERN });

const DEFAULT_OPTIONS: PlayerOptions = { repeat: false, random: false, single: "off", consume: false };

const SONG: Field[] = [
  req("file", shortText),
  opt("id", nonNeg),
  opt("position", nonNeg),
  opt("title", shortText),
  opt("artist", shortText),
  opt("album", shortText),
  opt("duration_ms", nonNeg),
];
const OPTIONS: Field[] = [
  opt("repeat", bool, false),
  opt("random", bool, false),
  opt("single", oneOf(["off", "on", "oneshot"] as const), "off"),
  opt("consume", bool, false),
];
const STATE: Field[] = [
  req("device_id", deviceId),
  req("version", nonNeg),
  req("status", oneOf(["play", "pause", "stop"] as const)),
  req("sampled_at_ms", nonNeg),
  opt("elapsed_ms", nonNeg),
  opt("song", struct<Song>("Song", SONG)),
  opt("volume", int({ min: 0, max: 100 })),
  opt("options", struct<PlayerOptions>("PlayerOptions", OPTIONS), DEFAULT_OPTIONS),
  opt("queue_length", nonNeg, 0),
  opt("queue_version", nonNeg, 0),
  opt("error", shortText),
];

const ACTION_FIELDS: Record<Action["type"], Field[]> = {
  play: [],
  pause: [],
  toggle: [],
  stop: [],
  next: [],
  previous: [],
  seek: [req("position_ms", nonNeg)],
  set_volume: [req("volume", int({ min: 0, max: 100 }))],
  change_volume: [req("delta", int({ min: -100, max: 100 }))],
  play_queue_item: [req("position", nonNeg)],
  ping: [],
};
const ACTION: Check<Action> = tagged<Action>(
  "action",
  "type",
  Object.fromEntries(
    Object.entries(ACTION_FIELDS).map(([tag, fields]) => [tag, struct(`${tag} action`, fields, { field: "type", value: tag })]),
  ),
);
const COMMAND: Field[] = [
  req("id", identifier),
  req("issued_at_ms", nonNeg),
  req("expires_at_ms", nonNeg),
  req("action", ACTION),
  opt("if_version", nonNeg),
];
const RESPONSE: Field[] = [
  req("command_id", identifier),
  req("device_id", deviceId),
  req("status", oneOf(["accepted", "succeeded", "failed", "rejected", "duplicate"] as const)),
  req("at_ms", nonNeg),
  opt("reason", oneOf(["unauthorized", "expired", "version-mismatch", "invalid", "unsupported", "busy", "clock-skew"] as const)),
  opt("message", shortText),
  opt("state_version", nonNeg),
  opt("duplicate", bool, false),
  opt("clock_offset_ms", int()),
  opt("retry_after_ms", nonNeg),
];
const CONNECTION: Field[] = [
  req("device_id", deviceId),
  req("online", bool),
  req("at_ms", nonNeg),
  opt("agent_version", shortText),
  opt("reason", shortText),
  opt("version", nonNeg),
];
const GRANT: Field[] = [
  req("grant_id", identifier),
  req("subject", shortText),
  req("session_id", identifier),
  req("signing_key", bytes({ length: 32 })),
  req("devices", array(deviceId)),
  req("rights", array(oneOf(["watch", "control"] as const))),
  req("issued_at_ms", nonNeg),
  req("expires_at_ms", nonNeg),
  opt("encryption_key", bytes({ length: 32 })),
];

export const checkState = struct<DeviceState>("DeviceState", STATE);
export const checkCommand = struct<Command>("Command", COMMAND);
export const checkResponse = struct<CommandResponse>("CommandResponse", RESPONSE);
export const checkConnection = struct<ConnectionStatus>("ConnectionStatus", CONNECTION);
export const checkGrant = struct<Grant>("Grant", GRANT);

const CHECKS: Record<MessageType, Check<Message>> = {
  state: checkState,
  command: checkCommand,
  response: checkResponse,
  connection: checkConnection,
};

/** Check a decoded body of header type `type`. */
export function checkMessage(type: MessageType, body: Wire, codec: Codec): Message {
  return CHECKS[type](body, type, codec);
}

/** The ordered map an encoder writes for `message` of header type `type`. */
export function messageToWire(type: MessageType, message: Message): Record<string, unknown> {
  switch (type) {
    case "state": {
      const s = message as DeviceState;
      return toWire(STATE, {
        ...s,
        song: s.song === undefined ? undefined : toWire(SONG, { ...s.song }),
        options: s.options === undefined || sameOptions(s.options, DEFAULT_OPTIONS) ? undefined : toWire(OPTIONS, { ...s.options }),
      });
    }
    case "command": {
      const c = message as Command;
      const tag = { field: "type", value: c.action.type };
      return toWire(COMMAND, { ...c, action: toWire(ACTION_FIELDS[c.action.type], { ...c.action }, tag) });
    }
    case "response":
      return toWire(RESPONSE, { ...message });
    case "connection":
      return toWire(CONNECTION, { ...message });
  }
}

/**
 * The wire map with the struct defaults that `toWire` leaves out: `options` compares
 * against its default as a whole, so a partial `options` is completed first.
 */
export function stateWithDefaults(state: Omit<DeviceState, "options" | "queue_length" | "queue_version"> & Partial<DeviceState>): DeviceState {
  return {
    ...state,
    options: { ...DEFAULT_OPTIONS, ...state.options },
    queue_length: state.queue_length ?? 0,
    queue_version: state.queue_version ?? 0,
  };
}

function sameOptions(a: PlayerOptions, b: PlayerOptions): boolean {
  return a.repeat === b.repeat && a.random === b.random && a.single === b.single && a.consume === b.consume;
}

export function grantToWire(grant: Grant): Record<string, unknown> {
  return toWire(GRANT, { ...grant });
}

/** The playback position at `nowMs`, interpolated while playing and capped at the song's duration. */
export function positionAt(state: DeviceState, nowMs: number): number | undefined {
  if (state.elapsed_ms === undefined) return undefined;
  if (state.status !== "play") return state.elapsed_ms;
  let position = state.elapsed_ms + Math.max(0, nowMs - state.sampled_at_ms);
  if (state.song?.duration_ms !== undefined) position = Math.min(position, state.song.duration_ms);
  return position;
}
