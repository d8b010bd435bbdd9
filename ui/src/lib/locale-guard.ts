// Imported first by main.ts, so it runs before any library reads navigator.language.
import { guardNavigatorLanguage } from './locale';

guardNavigatorLanguage(navigator);
