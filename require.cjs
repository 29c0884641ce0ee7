'use strict';
// `require('ecdysis')` from CommonJS. ecdysis is an ES module and has no
// CommonJS build: Node 20.19+ and 22.12+ require() ES modules, and this hands
// over the very module `import` gets (one copy, one state). Older Node throws
// ERR_REQUIRE_ESM, whose message names only import(); this one also says
// which Node versions would do.
try {
  module.exports = require('./dist/index.js');
} catch (err) {
  if (err && err.code === 'ERR_REQUIRE_ESM') {
    const error = new Error(
      `ecdysis is an ES module: require('ecdysis') needs Node 20.19+, 22.12+ or 24 (without ` +
        `--no-experimental-require-module), and this is Node ${process.version}. ` +
        `Use \`const { Ecdysis } = await import('ecdysis')\` instead, or a newer Node.`,
      { cause: err },
    );
    error.code = 'ERR_REQUIRE_ESM';
    throw error;
  }
  throw err;
}
