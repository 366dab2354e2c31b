/** A minimal MPD protocol client for the test's own checks (one command per connection). */
import { createConnection } from "node:net";

export function mpd(host: string, port: number, command: string): Promise<Map<string, string>> {
  return new Promise((resolve, reject) => {
    const socket = createConnection({ host, port });
    let buffer = "";
    let greeted = false;
    socket.setTimeout(5000, () => socket.destroy(new Error(`MPD did not answer ${command}`)));
    socket.on("error", reject);
    socket.on("data", (chunk) => {
      buffer += chunk.toString("utf8");
      if (!greeted && buffer.includes("\n")) {
        greeted = true;
        buffer = "";
        socket.write(`${command}\n`);
        return;
      }
      if (/^(OK|ACK .*)$/m.test(buffer)) {
        socket.end();
        if (/^ACK /m.test(buffer)) return reject(new Error(`MPD refused ${command}: ${buffer.trim()}`));
        const out = new Map<string, string>();
        for (const line of buffer.split("\n")) {
          const i = line.indexOf(": ");
          if (i > 0) out.set(line.slice(0, i), line.slice(i + 2));
        }
        resolve(out);
      }
    });
  });
}
