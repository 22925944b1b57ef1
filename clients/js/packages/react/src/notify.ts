/**
 * Optional attention helpers for notifications: a short sound and the browser
 * Notification API. Both do nothing unless `enabled` (a user preference) is true.
 */

/** Plays a short tone with Web Audio when `enabled`; resolves false when it could not. */
export async function playNotificationSound(enabled: boolean, options: { frequency?: number; durationMs?: number } = {}): Promise<boolean> {
  if (!enabled) return false;
  const Ctor = (globalThis as { AudioContext?: typeof AudioContext }).AudioContext;
  if (!Ctor) return false;
  try {
    const context = new Ctor();
    const oscillator = context.createOscillator();
    const gain = context.createGain();
    oscillator.frequency.value = options.frequency ?? 880;
    gain.gain.value = 0.05;
    oscillator.connect(gain).connect(context.destination);
    const seconds = (options.durationMs ?? 150) / 1000;
    oscillator.start();
    oscillator.stop(context.currentTime + seconds);
    oscillator.onended = () => void context.close();
    return true;
  } catch {
    return false;
  }
}

/** Asks for the browser's permission (call from a click); resolves the resulting permission, or `unsupported`. */
export async function requestNotificationPermission(): Promise<NotificationPermission | 'unsupported'> {
  const N = (globalThis as { Notification?: typeof Notification }).Notification;
  if (!N) return 'unsupported';
  if (N.permission !== 'default') return N.permission;
  return N.requestPermission();
}

/**
 * Shows a browser notification when `enabled` and permission was granted
 * (it never asks by itself). Returns the notification, or null.
 */
export function showBrowserNotification(enabled: boolean, title: string, options: NotificationOptions = {}): Notification | null {
  if (!enabled) return null;
  const N = (globalThis as { Notification?: typeof Notification }).Notification;
  if (!N || N.permission !== 'granted') return null;
  try {
    return new N(title, options);
  } catch {
    return null;
  }
}
