// `import ... from 'edgetrain'`: the Node.js entry under Node.js, the browser entry in bundlers
// for the web, the React Native entry under Metro. Their load() differ in options; these types
// are the Node.js entry's (import 'edgetrain/web' or 'edgetrain/react-native' for the others).
export * from './node.js';
