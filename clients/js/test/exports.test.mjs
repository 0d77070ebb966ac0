// The hand-written declarations and the modules export the same values: every run-time export is declared and
// every declared value exists (types and interfaces have no run-time side). `npm run typecheck` checks the
// declarations' types; this checks that they describe these modules.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';

/** The names a declaration file exports as values (`export declare const|function|class NAME`). */
async function declaredValues(file) {
  const text = await readFile(new URL(`../${file}`, import.meta.url), 'utf8');
  const names = [...text.matchAll(/^export declare (?:const|function|class) (\w+)/gm)].map((m) => m[1]);
  return [...new Set(names)].sort();
}

for (const [module, declarations] of [
  ['avemint.js', 'avemint.d.ts'],
  ['react.js', 'react.d.ts'],
]) {
  test(`${declarations} declares exactly the values ${module} exports`, async () => {
    const runtime = Object.keys(await import(`../${module}`)).sort();
    assert.ok(runtime.length > 2, `${module} exports something`);
    assert.deepEqual(await declaredValues(declarations), runtime);
  });
}

test('package.json maps both entries to these files, with their types first', async () => {
  const pkg = JSON.parse(await readFile(new URL('../package.json', import.meta.url), 'utf8'));
  assert.equal(pkg.type, 'module');
  assert.deepEqual(Object.keys(pkg.exports['.']), ['types', 'default']);
  assert.deepEqual(pkg.exports['.'], { types: './avemint.d.ts', default: './avemint.js' });
  assert.deepEqual(pkg.exports['./react'], { types: './react.d.ts', default: './react.js' });
  assert.deepEqual(pkg.dependencies ?? {}, {}, 'no run-time dependency');
  assert.deepEqual(Object.keys(pkg.peerDependencies), ['react']);
  assert.equal(pkg.peerDependenciesMeta.react.optional, true, 'React only for avemint/react');
  for (const file of ['avemint.js', 'avemint.d.ts', 'react.js', 'react.d.ts']) assert.ok(pkg.files.includes(file), file);
});
