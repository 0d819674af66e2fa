#!/usr/bin/env node
'use strict';
// A native-solc front for solcjs (the official compiler built to WebAssembly, from npm), so that
// py-solc-x, ape-solidity and slither compile with no download. It implements only what they use:
// `--version` and `--standard-json` (stdin -> stdout) with `--base-path` / `--include-path` for
// imports; `--allow-paths` is accepted and ignored (solcjs reads files only through the callback).
const fs = require('fs');
const path = require('path');

// Resolve node_modules next to this file's real location, so a symlink named solc-v<version> in
// SOLCX_BINARY_PATH works from any working directory.
const repo = path.resolve(path.dirname(fs.realpathSync(__filename)), '..');
const solc = require(path.join(repo, 'node_modules', 'solc'));

function fail(message) {
  process.stderr.write(`Error: ${message}\n`);
  process.exit(1);
}

function parseArgs(argv) {
  const opts = { version: false, standardJson: false, basePath: null, includePaths: [] };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const [flag, inline] = arg.includes('=') ? arg.split(/=(.*)/s, 2) : [arg, undefined];
    const value = () => (inline !== undefined ? inline : argv[++i]);
    switch (flag) {
      case '--version': opts.version = true; break;
      case '--standard-json': opts.standardJson = true; break;
      case '--base-path': opts.basePath = value(); break;
      case '--include-path': opts.includePaths.push(value()); break;
      case '--allow-paths': value(); break;
      case '-': break;
      default: fail(`unsupported option for the solcjs wrapper: ${arg}`);
    }
  }
  return opts;
}

function importCallback(roots) {
  return (importPath) => {
    const candidates = path.isAbsolute(importPath)
      ? [importPath]
      : roots.map((root) => path.resolve(root, importPath));
    for (const candidate of candidates) {
      try {
        return { contents: fs.readFileSync(candidate, 'utf8') };
      } catch (err) {
        if (err.code !== 'ENOENT' && err.code !== 'EISDIR') return { error: `${candidate}: ${err.message}` };
      }
    }
    return { error: `File not found: ${importPath} (searched ${candidates.join(', ')})` };
  };
}

// Write everything before exiting: node cuts piped output at 64 KiB when the process exits before
// stdout has drained, which silently truncates the JSON.
function writeAndExit(text, code) {
  process.stdout.write(text, () => process.exit(code));
}

const opts = parseArgs(process.argv.slice(2));
if (opts.version) {
  writeAndExit(`solc, the solidity compiler commandline interface\nVersion: ${solc.version()}\n`, 0);
} else if (opts.standardJson) {
  const chunks = [];
  process.stdin.on('data', (chunk) => chunks.push(chunk));
  process.stdin.on('end', () => {
    const roots = [opts.basePath || process.cwd(), ...opts.includePaths, process.cwd()];
    const output = solc.compile(Buffer.concat(chunks).toString('utf8'), { import: importCallback(roots) });
    // solcjs may print SMT-checker notices on stdout; only the JSON document may reach the caller.
    const json = output.split('\n').filter((line) => !line.startsWith('>>>')).join('\n');
    writeAndExit(json, 0);
  });
} else {
  fail('the solcjs wrapper supports only --version and --standard-json');
}
