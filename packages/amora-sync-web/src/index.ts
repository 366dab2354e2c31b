export * from "./errors.js";
export * from "./protocol.js";
export * from "./client.js";
export * from "./flow.js";
export * from "./session.js";
