// First: later imports (uPlot) read navigator.language while they load.
import './lib/locale-guard';
import { mount } from 'svelte';
import './app.css';
import App from './App.svelte';

const app = mount(App, { target: document.getElementById('app')! });

export default app;
