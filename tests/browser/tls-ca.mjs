// Makes the test CA of the browser suite's TLS run (see lib.mjs): in DIR,
// ca.pem (a CA), leaf.pem/leaf.key (a certificate for 127.0.0.1 and
// localhost it signed, ECDSA P-256) and leaf.spki (the base64 SHA-256 of the
// leaf's public key, for Chromium's --ignore-certificate-errors-spki-list).
// Uses the openssl command line. Usage: node tests/browser/tls-ca.mjs DIR
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const dir = process.argv[2];
if (!dir) {
  console.error('usage: node tests/browser/tls-ca.mjs DIR');
  process.exit(2);
}
mkdirSync(dir, { recursive: true });
const f = (name) => join(dir, name);
const ssl = (...args) => execFileSync('openssl', args, { stdio: ['ignore', 'pipe', 'pipe'] });
ssl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
  '-keyout', f('ca.key'), '-out', f('ca.pem'), '-days', '2', '-subj', '/CN=sigma browser test CA',
  '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign');
ssl('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
  '-keyout', f('leaf.key'), '-out', f('leaf.csr'), '-subj', '/CN=127.0.0.1');
writeFileSync(f('leaf.ext'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n');
ssl('x509', '-req', '-in', f('leaf.csr'), '-CA', f('ca.pem'), '-CAkey', f('ca.key'),
  '-CAcreateserial', '-out', f('leaf.pem'), '-days', '2', '-extfile', f('leaf.ext'));
const pub = ssl('x509', '-in', f('leaf.pem'), '-pubkey', '-noout');
const der = execFileSync('openssl', ['pkey', '-pubin', '-outform', 'der'], { input: pub });
const hash = execFileSync('openssl', ['dgst', '-sha256', '-binary'], { input: der });
writeFileSync(f('leaf.spki'), `${hash.toString('base64')}\n`);
console.log(dir);
