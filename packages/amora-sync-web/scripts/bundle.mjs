// Bundle the page (web/app.ts) for browsers with esbuild: one ES module in web/dist/.
import { build } from "esbuild";
import { existsSync } from "node:fs";

if (existsSync("web/app.ts")) {
  await build({
    entryPoints: ["web/app.ts"],
    bundle: true,
    format: "esm",
    platform: "browser",
    target: "es2022",
    sourcemap: true,
    minify: true,
    outfile: "web/dist/app.js",
    logLevel: "warning",
  });
}
