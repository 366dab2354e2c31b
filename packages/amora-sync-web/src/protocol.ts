/** The sans-IO protocol core: everything the vectors exercise, no network and no clock. */
export * from "./codec.js";
export * from "./envelope.js";
export * from "./keys.js";
export * from "./messages.js";
export * from "./topics.js";
