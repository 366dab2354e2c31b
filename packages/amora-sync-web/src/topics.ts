/** Topic names: `amora/devices/{device_id}/{state|commands|responses|connection}`. */
import { InvalidDeviceId, TopicError } from "./errors.js";
import { DEVICE_ID_PATTERN, type MessageType } from "./messages.js";

export const TOPIC_PREFIX = "amora/devices/";
export type TopicKind = "state" | "commands" | "responses" | "connection";

/** The header `type` each topic kind carries. */
export const KIND_TYPE: Record<TopicKind, MessageType> = {
  state: "state",
  commands: "command",
  responses: "response",
  connection: "connection",
};

export function validateDeviceId(deviceId: string): string {
  if (typeof deviceId !== "string" || !DEVICE_ID_PATTERN.test(deviceId)) throw new InvalidDeviceId(deviceId);
  return deviceId;
}

export function deviceTopic(deviceId: string, kind: TopicKind): string {
  return `${TOPIC_PREFIX}${validateDeviceId(deviceId)}/${kind}`;
}

export const stateTopic = (deviceId: string): string => deviceTopic(deviceId, "state");
export const commandsTopic = (deviceId: string): string => deviceTopic(deviceId, "commands");
export const responsesTopic = (deviceId: string): string => deviceTopic(deviceId, "responses");
export const connectionTopic = (deviceId: string): string => deviceTopic(deviceId, "connection");

export interface ParsedTopic {
  deviceId: string;
  kind: TopicKind;
}

export function parseTopic(topic: string): ParsedTopic {
  if (!topic.startsWith(TOPIC_PREFIX)) throw new TopicError(`topic ${JSON.stringify(topic)} does not start with ${TOPIC_PREFIX}`);
  const parts = topic.slice(TOPIC_PREFIX.length).split("/");
  if (parts.length !== 2) throw new TopicError(`topic ${JSON.stringify(topic)} is not ${TOPIC_PREFIX}{device_id}/{kind}`);
  const [deviceId, kind] = parts as [string, string];
  if (!DEVICE_ID_PATTERN.test(deviceId)) throw new InvalidDeviceId(deviceId);
  if (!Object.hasOwn(KIND_TYPE, kind)) throw new TopicError(`topic ${JSON.stringify(topic)} has unknown kind ${JSON.stringify(kind)}`);
  return { deviceId, kind: kind as TopicKind };
}
