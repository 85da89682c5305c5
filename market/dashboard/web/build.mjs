// Builds the dashboard into dist/ (committed): dist/index.html, dist/assets/app.js, app.css.
// Deterministic: same sources + same package-lock.json => byte-identical output.
// Usage: node market/dashboard/web/build.mjs [--outdir DIR]   (npm run build:dashboard)
import { build } from "esbuild";
import { copyFileSync, mkdirSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const flag = process.argv.indexOf("--outdir");
const outdir = resolve(flag > 0 ? process.argv[flag + 1] : join(here, "dist"));
mkdirSync(join(outdir, "assets"), { recursive: true });

const common = {
  bundle: true,
  minify: true,
  legalComments: "none",
  logLevel: "warning",
  absWorkingDir: here,
  target: ["es2020"],
  charset: "utf8",
};

await build({
  ...common,
  entryPoints: [join(here, "src/main.js")],
  outfile: join(outdir, "assets/app.js"),
  format: "esm",
  treeShaking: true,
});
await build({
  ...common,
  entryPoints: [join(here, "src/style.css")],
  outfile: join(outdir, "assets/app.css"),
});
copyFileSync(join(here, "src/index.html"), join(outdir, "index.html"));
