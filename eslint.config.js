// Lint: strict typing rules and the determinism boundary of DESIGN.md section 2.
// Core code (src/core, src/util, src/sim) must reach the OS, time and randomness only
// through the Env it is handed, so that whole clusters replay from one seed.
import tseslint from "typescript-eslint";

const osModules = ["fs", "net", "dgram", "timers", "child_process", "os", "worker_threads",
  "fs/promises", "timers/promises", "cluster", "http", "https", "crypto"];
const banned = osModules.flatMap((m) => [m, `node:${m}`]);
const timeGlobals = [
  { name: "setTimeout", message: "use env.timers" },
  { name: "setInterval", message: "use env.timers" },
  { name: "setImmediate", message: "use env.timers" },
  { name: "Date", message: "use env.clock" },
  { name: "performance", message: "use env.clock" },
];

export default tseslint.config(
  { ignores: ["dist/**", "node_modules/**"] },
  ...tseslint.configs.strict,
  {
    files: ["**/*.ts"],
    rules: {
      "@typescript-eslint/no-explicit-any": "error",
      "@typescript-eslint/no-non-null-assertion": "off",
      "@typescript-eslint/no-unused-vars": ["error", { argsIgnorePattern: "^_" }],
      "@typescript-eslint/no-extraneous-class": "off",
      "no-restricted-syntax": ["error", {
        selector: "ExportDefaultDeclaration", message: "no default exports (DESIGN.md 5.1)",
      }],
    },
  },
  {
    files: ["src/core/**/*.ts", "src/util/**/*.ts", "src/sim/**/*.ts"],
    rules: {
      "no-restricted-imports": ["error", { paths: banned.map((name) => ({
        name, message: "core code reaches the OS only through its Env (DESIGN.md 2)",
      })) }],
      "no-restricted-globals": ["error", ...timeGlobals],
    },
  },
  {
    // the core may not even reach the process: no nextTick ordering, env, argv or exit
    files: ["src/core/**/*.ts", "src/util/**/*.ts"],
    rules: {
      "no-restricted-globals": ["error", ...timeGlobals,
        { name: "process", message: "core code gets everything through its Env" },
        { name: "queueMicrotask", message: "ordering must come from the scheduler" },
      ],
      "no-restricted-properties": ["error",
        { object: "Math", property: "random", message: "use env.random" },
        { object: "process", property: "hrtime", message: "use env.clock" },
        { object: "Date", property: "now", message: "use env.clock" },
      ],
    },
  },
);
