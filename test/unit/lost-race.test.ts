import { describe, expect, it } from 'vitest';
import { ConflictError, ignoreLostRace, ServiceUnavailableError } from '../../functions/core/errors.ts';

describe('ignoreLostRace', () => {
  it('ignores losing a race to another writer, and nothing else', async () => {
    await expect(Promise.reject(new ConflictError('changed')).catch(ignoreLostRace)).resolves.toBeUndefined();
    const down = new ServiceUnavailableError('throttled');
    await expect(Promise.reject(down).catch(ignoreLostRace)).rejects.toBe(down);
    await expect(Promise.reject(new Error('socket hang up')).catch(ignoreLostRace)).rejects.toThrow(
      'socket hang up',
    );
  });
});
