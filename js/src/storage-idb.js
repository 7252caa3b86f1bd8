// Browser storage: checkpoints in IndexedDB, under keys such as 'mine' or 'ck.safetensors'.

import { EdgetrainError } from './core.js';

function open(dbName, storeName) {
  return new Promise((resolve, reject) => {
    if (!globalThis.indexedDB) {
      reject(new EdgetrainError('IndexedDB is not available here'));
      return;
    }
    const req = indexedDB.open(dbName, 1);
    req.onupgradeneeded = () => req.result.createObjectStore(storeName);
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(new EdgetrainError(`IndexedDB: ${req.error}`));
  });
}

async function transact(dbName, storeName, mode, fn) {
  const db = await open(dbName, storeName);
  try {
    return await new Promise((resolve, reject) => {
      const tx = db.transaction(storeName, mode);
      const req = fn(tx.objectStore(storeName));
      tx.oncomplete = () => resolve(req.result);
      tx.onerror = () => reject(new EdgetrainError(`IndexedDB: ${tx.error}`));
      tx.onabort = () => reject(new EdgetrainError(`IndexedDB: ${tx.error}`));
    });
  } finally {
    db.close();
  }
}

/** A checkpoint store in IndexedDB (database `edgetrain`, object store `checkpoints`). */
export function idbStore(dbName = 'edgetrain', storeName = 'checkpoints') {
  return {
    describe: () => 'IndexedDB',
    async save(key, bytes) {
      await transact(dbName, storeName, 'readwrite', (store) => store.put(bytes, String(key)));
    },
    async load(key) {
      const v = await transact(dbName, storeName, 'readonly', (store) => store.get(String(key)));
      return v === undefined ? null : new Uint8Array(v);
    },
  };
}
