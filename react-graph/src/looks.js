// How states look (model.js `stateLooks`), handed down the component tree:
// the node components that React Flow renders get it from here.

import { createContext, useContext } from 'react';
import { stateLooks } from './model.js';

export const LooksContext = createContext(stateLooks(null));

export function useLooks() {
  return useContext(LooksContext);
}
