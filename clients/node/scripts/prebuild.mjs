// Before each build: removes the previous output (dist/, build/) so nothing stale is shipped or
// tested, and copies the gRPC contract (../../proto/keyrelay/v1/*.proto, the one source of
// truth) into this package's proto/ folder, which the package ships and the SDK loads at run time.
import { copyFileSync, mkdirSync, readdirSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
for (const output of ['dist', 'build', 'proto']) {
  rmSync(join(root, output), { recursive: true, force: true });
}
const from = join(root, '..', '..', 'proto', 'keyrelay', 'v1');
const to = join(root, 'proto', 'keyrelay', 'v1');
mkdirSync(to, { recursive: true });
const files = readdirSync(from).filter((name) => name.endsWith('.proto'));
if (files.length === 0) {
  throw new Error(`no .proto files in ${from}`);
}
for (const name of files) {
  copyFileSync(join(from, name), join(to, name));
}
console.error(`prebuild: ${files.join(', ')} -> proto/keyrelay/v1`);
