// End-to-end encryption for the example, with WebCrypto only, so the very same file runs in
// the server's callbacks (Node >= 20, Bun) and in the browser page:
// ECDH P-256 key agreement -> HKDF-SHA-256 (salt from the server) -> AES-256-GCM.
(function (root, factory) {
  if (typeof module === 'object' && module.exports) {
    module.exports = factory(globalThis.crypto);
  } else {
    root.E2E = factory(root.crypto);
  }
})(globalThis, function (crypto) {
  const { subtle } = crypto;
  const curve = { name: 'ECDH', namedCurve: 'P-256' };
  const info = new TextEncoder().encode('ignis-native-ws encrypted chat');

  const toBase64 = buffer => btoa(String.fromCharCode(...new Uint8Array(buffer)));
  const fromBase64 = text => Uint8Array.from(atob(text), char => char.charCodeAt(0));

  /** A fresh key pair; `publicKey` is the raw public key in base64, to send to the peer. */
  async function generateKeyPair() {
    const keyPair = await subtle.generateKey(curve, false, ['deriveBits']);
    return { privateKey: keyPair.privateKey, publicKey: toBase64(await subtle.exportKey('raw', keyPair.publicKey)) };
  }

  /** 32 random bytes in base64: the HKDF salt the server picks per client. */
  function randomSalt() {
    return toBase64(crypto.getRandomValues(new Uint8Array(32)));
  }

  /** The AES-GCM key both sides derive from their private key and the other's public key. */
  async function deriveKey(privateKey, peerPublicKey, salt) {
    const peer = await subtle.importKey('raw', fromBase64(peerPublicKey), curve, false, []);
    const shared = await subtle.deriveBits({ name: 'ECDH', public: peer }, privateKey, 256);
    const material = await subtle.importKey('raw', shared, 'HKDF', false, ['deriveKey']);
    return subtle.deriveKey(
      { name: 'HKDF', hash: 'SHA-256', salt: fromBase64(salt), info },
      material,
      { name: 'AES-GCM', length: 256 },
      false,
      ['encrypt', 'decrypt'],
    );
  }

  async function encrypt(key, text) {
    const iv = crypto.getRandomValues(new Uint8Array(12));
    const ciphertext = await subtle.encrypt({ name: 'AES-GCM', iv }, key, new TextEncoder().encode(text));
    return { iv: toBase64(iv), ciphertext: toBase64(ciphertext) };
  }

  /** Throws when the ciphertext was not made with this key (AES-GCM authenticates it). */
  async function decrypt(key, { iv, ciphertext }) {
    const plain = await subtle.decrypt({ name: 'AES-GCM', iv: fromBase64(iv) }, key, fromBase64(ciphertext));
    return new TextDecoder().decode(plain);
  }

  return { generateKeyPair, randomSalt, deriveKey, encrypt, decrypt };
});
