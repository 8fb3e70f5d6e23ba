/** A throwaway certificate authority (node-forge, with keys from node:crypto): CA, server and client certificates. */

import { generateKeyPairSync } from 'node:crypto';

import forge from 'node-forge';

export interface Issued {
  cert: string;
  key: string;
}

function rsaKeys(): { privateKey: forge.pki.rsa.PrivateKey; publicKey: forge.pki.rsa.PublicKey; pem: string } {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const pem = privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
  const forgeKey = forge.pki.privateKeyFromPem(pem) as forge.pki.rsa.PrivateKey;
  return { privateKey: forgeKey, publicKey: forge.pki.setRsaPublicKey(forgeKey.n, forgeKey.e), pem };
}

let serial = 1;

function certificate(
  subject: string,
  publicKey: forge.pki.rsa.PublicKey,
  issuer: { name: forge.pki.CertificateField[]; key: forge.pki.rsa.PrivateKey } | undefined,
  extensions: object[],
): forge.pki.Certificate {
  const cert = forge.pki.createCertificate();
  cert.publicKey = publicKey;
  serial += 1;
  cert.serialNumber = `01${Date.now().toString(16)}${serial.toString(16).padStart(4, '0')}`;
  cert.validity.notBefore = new Date(Date.now() - 60 * 60 * 1000);
  cert.validity.notAfter = new Date(Date.now() + 24 * 60 * 60 * 1000);
  const name = [{ name: 'commonName', value: subject }];
  cert.setSubject(name);
  cert.setIssuer(issuer?.name ?? name);
  cert.setExtensions(extensions);
  return cert;
}

export class TestCa {
  readonly cert: string;
  readonly #key: forge.pki.rsa.PrivateKey;
  readonly #name: forge.pki.CertificateField[];

  constructor(name = 'keyrelay-node-test-ca') {
    const keys = rsaKeys();
    const cert = certificate(name, keys.publicKey, undefined, [
      { name: 'basicConstraints', cA: true, critical: true },
      { name: 'keyUsage', keyCertSign: true, cRLSign: true, critical: true },
    ]);
    cert.sign(keys.privateKey, forge.md.sha256.create());
    this.cert = forge.pki.certificateToPem(cert);
    this.#key = keys.privateKey;
    this.#name = cert.subject.attributes;
  }

  /** A server certificate for 127.0.0.1 and localhost. */
  server(): Issued {
    return this.#leaf('127.0.0.1', { serverAuth: true }, [
      { type: 7, ip: '127.0.0.1' },
      { type: 2, value: 'localhost' },
    ]);
  }

  /** A client certificate. */
  client(name = 'verifier'): Issued {
    return this.#leaf(name, { clientAuth: true }, [{ type: 2, value: name }]);
  }

  #leaf(subject: string, usage: Record<string, boolean>, altNames: object[]): Issued {
    const keys = rsaKeys();
    const cert = certificate(subject, keys.publicKey, { name: this.#name, key: this.#key }, [
      { name: 'basicConstraints', cA: false },
      { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, critical: true },
      { name: 'extKeyUsage', ...usage },
      { name: 'subjectAltName', altNames },
    ]);
    cert.sign(this.#key, forge.md.sha256.create());
    return { cert: forge.pki.certificateToPem(cert), key: keys.pem };
  }
}
