/** One SDK client per region, made on first use (a Lambda container keeps them between invocations). */
export function regionalClients<T>(
  make: (region: string | undefined) => T,
): (region: string | undefined) => T {
  const clients = new Map<string, T>();
  return (region) => {
    const key = region ?? '';
    let client = clients.get(key);
    if (!client) {
      client = make(region);
      clients.set(key, client);
    }
    return client;
  };
}
