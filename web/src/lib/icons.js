// Stroke icons on a 24px grid (path data for AppIcon).
export const PATHS = {
  plus: 'M12 5v14M5 12h14',
  trash: 'M4 7h16M10 11v6M14 11v6M6 7l1 13h10l1-13M9 7V4h6v3',
  sliders:
    'M4 6h8M18 6h2M4 12h2M12 12h8M4 18h10M20 18h0M12 6a2.5 2.5 0 1 0 5 0a2.5 2.5 0 1 0-5 0M6 12a2.5 2.5 0 1 0 5 0a2.5 2.5 0 1 0-5 0M14 18a2.5 2.5 0 1 0 5 0a2.5 2.5 0 1 0-5 0',
  info: 'M12 3a9 9 0 1 0 0 18a9 9 0 1 0 0-18M12 11v5M12 8h.01',
  menu: 'M4 6h16M4 12h16M4 18h16',
  send: 'M12 19V5M6 11l6-6 6 6',
  stop: 'M8 8h8v8H8z',
  copy: 'M9 9h10v10H9zM5 15V5h10',
  check: 'M5 12.5l4.5 4.5L19 7.5',
  close: 'M6 6l12 12M18 6L6 18',
  chat: 'M5 5h14v10H9l-4 4z',
  retry: 'M19 12a7 7 0 1 1-2.05-4.95M19 4v4h-4',
  alert: 'M12 4l9 16H3zM12 10v4M12 17h.01',
  edit: 'M4 20h4L19 9l-4-4L4 16zM13.5 6.5l4 4',
  left: 'M15 6l-6 6 6 6',
  right: 'M9 6l6 6-6 6',
  download: 'M12 4v11M7 10l5 5 5-5M5 20h14',
  upload: 'M12 20V9M7 14l5-5 5 5M5 4h14',
  search: 'M11 4a7 7 0 1 0 0 14a7 7 0 1 0 0-14M16 16l4 4',
  chip: 'M8 8h8v8H8zM10 3v3M14 3v3M10 18v3M14 18v3M3 10h3M3 14h3M18 10h3M18 14h3',
};
